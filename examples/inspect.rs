//! How sure was the model? For a prompt (and optionally a greedy continuation), each token's
//! probability and the most likely alternatives, as a table, JSON, or an HTML page with the
//! tokens coloured by probability and an attention heatmap:
//! `cargo run --release --example inspect -- --prompt "The capital of France is" --generate 8 --html out.html`.

mod common;

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser;
use common::CommonArgs;
use kiln::{GenerationConfig, TopLogprob, TraceOptions};

#[derive(Parser, Debug)]
#[command(about = "Each token's probability and alternatives, as a table or an HTML page")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The text to inspect.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the text from a file.
    #[arg(long)]
    prompt_file: Option<std::path::PathBuf>,
    /// Alternatives shown per token.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Greedy tokens to generate after the text (shown the same way, marked as generated).
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// Write an HTML page: tokens coloured by probability (hover for alternatives), the
    /// attention weights of one layer (averaged over heads) as a heatmap, and the size (L2
    /// norm) of every hidden state, layer by layer.
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
    /// The layer whose attention the HTML page shows (default: the last).
    #[arg(long)]
    layer: Option<usize>,
}

/// One row of the table.
#[derive(serde::Serialize)]
struct Row {
    position: usize,
    id: u32,
    text: String,
    logprob: f32,
    top: Vec<TopLogprob>,
    generated: bool,
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(args: Args) -> kiln::Result<()> {
    let device = args.common.device()?;
    let text = common::prompt_text(
        &args.prompt,
        &args.prompt_file,
        "The quick brown fox jumps over the lazy dog",
    )?;
    let model = args.common.load_model(args.common.model_dir()?, &device)?;
    let tok = model.tokenizer()?;
    let ids = model.encode(&text)?;

    // The text: every token after the first, scored given those before it.
    let mut session = model.session();
    let score = session.score_ids(&ids, args.top)?;
    let mut rows: Vec<Row> = score
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| Row {
            position: i + 1,
            id: t.id,
            text: t.text.clone(),
            logprob: t.logprob,
            top: t.top.clone(),
            generated: false,
        })
        .collect();
    // A greedy continuation with the same report.
    if args.generate > 0 {
        let cfg = GenerationConfig::default()
            .max_new_tokens(args.generate)
            .logprobs(args.top);
        let start = ids.len();
        let mut prev = ids[ids.len() - 1];
        for (i, t) in session.generate_ids(&ids, &cfg)?.enumerate() {
            let t = t?;
            let lp = t.logprobs.unwrap_or_else(|| unreachable!("asked for"));
            // The token's own text after the one before it (the stream's text may hold back
            // part of a character or a possible stop string).
            let both = tok.decode(&[prev, t.id], false)?;
            let before = tok.decode(&[prev], false)?;
            let text = both.strip_prefix(&before).map(str::to_string);
            prev = t.id;
            rows.push(Row {
                position: start + i,
                id: t.id,
                text: text.map_or_else(|| tok.decode(&[t.id], false), Ok)?,
                logprob: lp.logprob,
                top: lp.top,
                generated: true,
            });
        }
    }
    let mean_nll = score.mean_nll();

    if let Some(path) = &args.html {
        // The text and what was generated after it (scoring leaves the session empty).
        let all: Vec<u32> = if session.tokens().is_empty() {
            ids.clone()
        } else {
            session.tokens().to_vec()
        };
        let trace = model.trace_ids(&all, TraceOptions::all())?;
        let layers = trace.attentions.len();
        let layer = args.layer.unwrap_or(layers.saturating_sub(1));
        if layer >= layers {
            return Err(kiln::Error::InvalidArgument {
                name: "--layer".into(),
                message: format!(
                    "the model has {layers} layers (0..{})",
                    layers.saturating_sub(1)
                ),
            });
        }
        let labels: Vec<String> = all
            .iter()
            .map(|&id| tok.decode(&[id], false))
            .collect::<kiln::Result<_>>()?;
        let page = html_page(&text, &rows, &labels, &trace, layer, mean_nll, &model);
        std::fs::write(path, page).map_err(|e| kiln::Error::Io {
            path: path.clone(),
            source: e,
        })?;
        eprintln!("wrote {}", path.display());
    }

    if args.common.json {
        let out = serde_json::json!({
            "prompt_tokens": ids,
            "tokens": rows,
            "mean_nll": mean_nll,
            "perplexity": mean_nll.exp(),
        });
        common::outln(format!("{out}"));
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5}  {:<16} {:>7}  {:<10}  alternatives",
        "pos", "token", "p", ""
    );
    for r in &rows {
        let p = r.logprob.exp();
        let alts: Vec<String> = r
            .top
            .iter()
            .map(|a| format!("{} {:.1}%", show(&a.text), 100.0 * a.logprob.exp()))
            .collect();
        let _ = writeln!(
            out,
            "{:>4}{} {:<16} {:>6.1}%  {:<10}  {}",
            r.position,
            if r.generated { "*" } else { " " },
            clip(&show(&r.text), 16),
            100.0 * p,
            bar(p, 10),
            alts.join("  ")
        );
    }
    let _ = write!(
        out,
        "text: {} tokens scored, mean NLL {mean_nll:.4}, perplexity {:.3}{}",
        score.tokens.len(),
        mean_nll.exp(),
        if args.generate > 0 {
            "; * = generated (greedy)"
        } else {
            ""
        }
    );
    common::outln(out);
    Ok(())
}

/// A token's text with whitespace made visible, quoted.
fn show(t: &str) -> String {
    format!("{:?}", t)
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('…');
        c
    }
}

/// A horizontal bar of `width` cells, in eighths.
fn bar(p: f32, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let eighths = (p.clamp(0.0, 1.0) * (width * 8) as f32).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    s.push_str(PARTS[eighths % 8]);
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Red (p ≤ 1e-4) through yellow (1 %) to green (p = 1), on a log scale.
fn colour(p: f32) -> String {
    let hue = 120.0 * (1.0 + p.max(1e-9).log10() / 4.0).clamp(0.0, 1.0);
    format!("hsl({hue:.0},75%,80%)")
}

fn html_page(
    text: &str,
    rows: &[Row],
    labels: &[String],
    trace: &kiln::Trace,
    layer: usize,
    mean_nll: f64,
    model: &kiln::Model,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><meta charset=utf-8><title>kiln inspect</title><style>\
         body{{font:14px system-ui,sans-serif;margin:2em;max-width:70em}}\
         .t{{white-space:pre-wrap;font-family:monospace;padding:1px 0;border-radius:3px}}\
         .g{{outline:1px dashed #555}} table{{border-collapse:collapse}}\
         td{{width:14px;height:14px;padding:0}} th{{font:11px monospace;font-weight:normal;text-align:right;padding-right:4px}}\
         th.c{{writing-mode:vertical-rl;text-align:left}}</style>\
         <h1>kiln inspect</h1><p>{} ({}), {} tokens; text mean NLL {mean_nll:.4}, perplexity {:.3}. \
         Colour: the model's probability of each token, log scale (red ≤ 0.01 %, yellow 1 %, \
         green 100 %); hover for the alternatives; dashed = generated.</p><p>",
        escape(&model.dir().display().to_string()),
        escape(model.architecture()),
        labels.len(),
        mean_nll.exp()
    );
    let _ = write!(
        h,
        "<span class=t title=\"first token: not scored\">{}</span>",
        escape(&labels[0])
    );
    for r in rows {
        let p = r.logprob.exp();
        let alts: Vec<String> = r
            .top
            .iter()
            .map(|a| format!("{:?} {:.1}%", a.text, 100.0 * a.logprob.exp()))
            .collect();
        let _ = write!(
            h,
            "<span class=\"t{}\" style=\"background:{}\" title=\"{}\">{}</span>",
            if r.generated { " g" } else { "" },
            colour(p),
            escape(&format!("p = {:.2}%\n{}", 100.0 * p, alts.join("\n"))),
            escape(&r.text)
        );
    }
    let n = trace.seq();
    let _ = write!(
        h,
        "</p><h2>Attention, layer {layer} (mean over {} heads)</h2>\
         <p>Row: the query token; column: the token it attends to; darker = more weight.</p><table><tr><th></th>",
        trace.heads
    );
    for l in labels {
        let _ = write!(h, "<th class=c>{}</th>", escape(&clip(&show(l), 12)));
    }
    h.push_str("</tr>");
    for (q, label) in labels.iter().enumerate().take(n) {
        let _ = write!(h, "<tr><th>{}</th>", escape(&clip(&show(label), 12)));
        for k in 0..n {
            let w: f32 = (0..trace.heads)
                .filter_map(|head| trace.attention(layer, head, q).map(|row| row[k]))
                .sum::<f32>()
                / trace.heads.max(1) as f32;
            let shade = 100.0 - 70.0 * w.clamp(0.0, 1.0).sqrt();
            let _ = write!(
                h,
                "<td style=\"background:hsl(220,60%,{shade:.0}%)\" title=\"{:.3}\"></td>",
                w
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    // Hidden states: how large each position's residual stream is after each layer.
    let _ = write!(
        h,
        "<h2>Hidden states</h2><p>L2 norm of each position's hidden state: row 0 is the \
         embedding output, row i the state after i layers (the last after the final norm); \
         darker = larger, per row.</p><table><tr><th></th>"
    );
    for l in labels {
        let _ = write!(h, "<th class=c>{}</th>", escape(&clip(&show(l), 12)));
    }
    h.push_str("</tr>");
    for i in 0..trace.hidden_states.len() {
        let norms: Vec<f32> = (0..n)
            .map(|p| {
                trace
                    .hidden(i, p)
                    .map_or(0.0, |v| v.iter().map(|x| x * x).sum::<f32>().sqrt())
            })
            .collect();
        let max = norms.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
        let _ = write!(h, "<tr><th>{i}</th>");
        for v in norms {
            let shade = 100.0 - 70.0 * (v / max).clamp(0.0, 1.0);
            let _ = write!(
                h,
                "<td style=\"background:hsl(30,70%,{shade:.0}%)\" title=\"{v:.3}\"></td>"
            );
        }
        h.push_str("</tr>");
    }
    let _ = write!(h, "</table><p><small>Text: {}</small></p>", escape(text));
    h
}
