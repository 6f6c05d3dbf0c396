//! Chat with an instruct model through its own chat template:
//! `cargo run --release --example chat -- --model DIR` (interactive), or
//! `--messages conversation.json` to answer once, or `--render-only` to print the prompt.
//!
//! The REPL keeps one `Session`: each turn renders the whole conversation, but only the
//! tokens past what the cache already holds are run.

mod common;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Parser;
use common::{CommonArgs, SamplingArgs};
use kiln::{ChatTemplate, Error, Message, Session};

#[derive(Parser, Debug)]
#[command(about = "Chat with a Hugging Face instruct model folder")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A JSON list of {"role": …, "content": …} messages to answer once (no REPL).
    #[arg(long)]
    messages: Option<std::path::PathBuf>,
    /// Print the prompt the chat template renders for --messages (with the generation
    /// prompt), exactly, and exit without loading weights.
    #[arg(long, requires = "messages")]
    render_only: bool,
    /// A system message to start the interactive conversation with.
    #[arg(long)]
    system: Option<String>,
}

fn main() -> ExitCode {
    common::main(run)
}

fn read_messages(path: &std::path::Path) -> kiln::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    let list = value.as_array().ok_or_else(|| Error::InvalidArgument {
        name: "--messages".into(),
        message: format!("{} must hold a JSON list of messages", path.display()),
    })?;
    for (i, m) in list.iter().enumerate() {
        if !m.get("role").is_some_and(|r| r.is_string()) {
            return Err(Error::InvalidArgument {
                name: "--messages".into(),
                message: format!("message {i} in {} has no string \"role\"", path.display()),
            });
        }
    }
    Ok(list.clone())
}

fn run(args: Args) -> kiln::Result<()> {
    let device = args.common.device()?;
    let dir = args.common.model_dir()?;
    let messages = args.messages.as_deref().map(read_messages).transpose()?;

    if args.render_only {
        let messages = messages.unwrap_or_default();
        let template = ChatTemplate::from_dir(&dir)?.ok_or_else(|| ChatTemplate::missing(&dir))?;
        let prompt = template.render(&messages, true, None, None)?;
        if args.common.json {
            common::outln(serde_json::json!({ "prompt": prompt }).to_string());
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(prompt.as_bytes());
            let _ = out.flush();
        }
        return Ok(());
    }

    let model = args.common.load_model(&dir, &device)?;
    model.chat_template()?;
    let cfg = args.sampling.config(&model)?;
    let mut session = model.session();

    if let Some(messages) = messages {
        let reply = answer(&mut session, &messages, &cfg, !args.common.json)?;
        if args.common.json {
            let out = serde_json::json!({
                "prompt_tokens": reply.prompt_tokens,
                "generated_tokens": reply.ids,
                "text": reply.text,
                "finish_reason": reply.finish,
                "prefill_tokens_per_s": reply.stats.prefill_tokens_per_s(),
                "decode_tokens_per_s": reply.stats.decode_tokens_per_s(),
            });
            common::outln(out.to_string());
        } else {
            common::outln("");
        }
        return Ok(());
    }

    // Interactive: one line per user turn; /reset forgets the conversation, /exit or EOF ends.
    let mut history: Vec<serde_json::Value> = Vec::new();
    let start = |history: &mut Vec<serde_json::Value>| {
        history.clear();
        if let Some(s) = &args.system {
            history.push(serde_json::to_value(Message::system(s.clone())).unwrap_or_default());
        }
    };
    start(&mut history);
    eprintln!("chat: type a message and press Enter; /reset starts over, /exit or Ctrl-D quits");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).map_err(|e| Error::Io {
            path: "<stdin>".into(),
            source: e,
        })? == 0
        {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                start(&mut history);
                session.reset();
                continue;
            }
            _ => {}
        }
        history.push(serde_json::to_value(Message::user(line)).unwrap_or_default());
        let reply = match answer(&mut session, &history, &cfg, true) {
            Ok(r) => r,
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
                continue;
            }
        };
        common::outln("");
        eprintln!(
            "[{} new prompt tokens ({} reused from the cache), {} generated ({}); decode {:.1} tok/s]",
            reply.stats.prompt_tokens,
            reply.stats.cached_tokens,
            reply.stats.generated_tokens,
            reply.finish,
            reply.stats.decode_tokens_per_s()
        );
        history.push(serde_json::to_value(Message::assistant(reply.text)).unwrap_or_default());
    }
    Ok(())
}

struct Reply {
    prompt_tokens: Vec<u32>,
    ids: Vec<u32>,
    text: String,
    finish: &'static str,
    stats: kiln::GenerationStats,
}

fn answer(
    session: &mut Session,
    messages: &[serde_json::Value],
    cfg: &kiln::GenerationConfig,
    stream: bool,
) -> kiln::Result<Reply> {
    let mut generator = session.chat(messages, cfg)?;
    let mut ids = Vec::new();
    let mut text = String::new();
    for token in generator.by_ref() {
        let token = token?;
        ids.push(token.id);
        text.push_str(&token.text);
        if stream {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(token.text.as_bytes());
            let _ = out.flush();
        }
    }
    let stats = generator.stats();
    let finish = generator.finish_reason().map_or("length", |f| f.as_str());
    drop(generator);
    let all = session.tokens();
    Ok(Reply {
        prompt_tokens: all[..all.len() - ids.len()].to_vec(),
        ids,
        text,
        finish,
        stats,
    })
}
