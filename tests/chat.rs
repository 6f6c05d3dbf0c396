//! Chat templates against transformers' own renderings (tests/fixtures/chat_templates.json,
//! written by tools/make_generation_fixtures.py from the real templates in
//! ../shared/chat-templates), and chat template discovery in model folders.

mod common;

use std::path::PathBuf;

use kiln::{ChatTemplate, Error, Message};
use serde_json::Value;

fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/chat-templates")
}

fn cases() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Where kiln knowingly renders differently from transformers (Python's jinja2), by template
/// and conversation. Each is checked to differ only in the way described.
fn known_divergence(template: &str, conversation: &str) -> Option<&'static str> {
    match (template, conversation) {
        // transformers passes tools=None and these tool-use templates iterate it: a Python
        // TypeError there; minijinja iterates none as an empty list and renders.
        (t, c)
            if (t.starts_with("CohereForAI-c4ai-command-r-plus-tool_use")
                || t.starts_with("NousResearch-Hermes"))
                && !c.starts_with("tool") =>
        {
            Some("python-error")
        }
        // `tools | map('tojson')` inside tojson: jinja2 hands json.dumps a generator and fails.
        ("llama-cpp-deepseek-r1.jinja", "tools" | "tool_call") => Some("python-error"),
        // `"…"|safe + t | tojson()`: jinja2's Markup escapes the JSON it is concatenated with
        // (`"` becomes `&#34;`); minijinja concatenates plain strings.
        ("meetkai-functionary-medium-v3.1.jinja", "tools") => Some("markup-escape"),
        _ => None,
    }
}

/// Every case renders byte for byte as transformers renders it, and raises where it raises
/// (with the template's own message when it calls `raise_exception`), except the few known
/// divergences above.
#[test]
fn real_templates_render_as_transformers_does() {
    let cases = cases();
    assert!(cases.len() > 100, "fixture has {} cases", cases.len());
    let mut failures = Vec::new();
    let mut rendered = 0;
    for case in &cases {
        let name = format!(
            "{} / {}",
            case["template"].as_str().unwrap(),
            case["conversation"]
        );
        let source =
            std::fs::read_to_string(templates_dir().join(case["template"].as_str().unwrap()))
                .unwrap();
        let extra = case["extra"].as_object().unwrap();
        let template = ChatTemplate::new(
            &source,
            extra["bos_token"].as_str().unwrap(),
            extra["eos_token"].as_str().unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}: does not compile: {e}"));
        let messages = case["messages"].as_array().unwrap();
        let tools = (!case["tools"].is_null()).then_some(&case["tools"]);
        let got = template.render(
            messages,
            case["add_generation_prompt"].as_bool().unwrap(),
            tools,
            Some(extra),
        );
        let divergence = known_divergence(
            case["template"].as_str().unwrap(),
            case["conversation"].as_str().unwrap(),
        );
        match (divergence, &got) {
            (Some("python-error"), Ok(_)) if case.get("error").is_some() => {
                continue;
            }
            (Some("markup-escape"), Ok(g)) => {
                let want = case["expected"].as_str().unwrap().replace("&#34;", "\"");
                if *g != want {
                    failures.push(format!(
                        "{name}: differs beyond Markup escaping:\n{g:?}\n{want:?}"
                    ));
                }
                continue;
            }
            (Some(kind), _) => {
                failures.push(format!(
                    "{name}: listed as a {kind} divergence but did not diverge so"
                ));
                continue;
            }
            (None, _) => {}
        }
        match (&case.get("expected"), &case.get("error"), got) {
            (Some(want), _, Ok(got)) => {
                if want.as_str().unwrap() != got {
                    failures.push(format!("{name}: rendered\n{got:?}\nwant\n{want:?}"));
                } else {
                    rendered += 1;
                }
            }
            (Some(_), _, Err(e)) => failures.push(format!("{name}: unexpected error {e}")),
            (None, Some(err), Ok(got)) => failures.push(format!(
                "{name}: rendered {got:?} but transformers fails: {err}"
            )),
            (None, Some(err), Err(e)) => {
                let Error::ChatTemplate { message } = &e else {
                    failures.push(format!("{name}: wrong error type {e:?}"));
                    continue;
                };
                if err["raised"].as_bool().unwrap() && message != err["message"].as_str().unwrap() {
                    failures.push(format!(
                        "{name}: raised {message:?}, want {:?}",
                        err["message"]
                    ));
                }
            }
            _ => panic!("{name}: malformed fixture case"),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    assert!(rendered > 70, "only {rendered} renderings compared");
}

/// `raise_exception` surfaces as `Error::ChatTemplate` with the template's message.
#[test]
fn raising_template_is_a_typed_error() {
    let source =
        std::fs::read_to_string(templates_dir().join("google-gemma-2-2b-it.jinja")).unwrap();
    let t = ChatTemplate::new(&source, "<bos>", "<eos>").unwrap();
    let err = t
        .render(
            &[Message::system("be nice"), Message::user("hi")],
            true,
            None,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChatTemplate { message } if message == "System role not supported"),
        "{err}"
    );
    assert!(err.to_string().contains("System role not supported"));
}

/// A syntax error in a template is an error at load, naming the problem.
#[test]
fn broken_template_is_a_typed_error() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "", "").unwrap_err();
    assert!(matches!(err, Error::ChatTemplate { .. }), "{err}");
}

/// The template comes from chat_template.jinja, or tokenizer_config.json's `chat_template`
/// (a string, or a list of named templates where "default" is used), with its bos/eos tokens.
#[test]
fn template_is_found_in_the_folder() {
    let dir = common::TempDir::new("chat-discovery");
    let jinja = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}";
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": jinja}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let t = ChatTemplate::from_dir(dir.path())
        .unwrap()
        .expect("a template");
    assert_eq!(
        t.render(&[Message::user("hi")], false, None, None).unwrap(),
        "<s>[user]hi</s>"
    );

    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "J{{ messages[0].content }}",
    )
    .unwrap();
    let t = ChatTemplate::from_dir(dir.path())
        .unwrap()
        .expect("a template");
    assert_eq!(
        t.render(&[Message::user("x")], false, None, None).unwrap(),
        "Jx"
    );

    let empty = common::TempDir::new("chat-none");
    assert!(ChatTemplate::from_dir(empty.path()).unwrap().is_none());

    std::fs::write(
        empty.path().join("tokenizer_config.json"),
        r#"{"chat_template": 7}"#,
    )
    .unwrap();
    let err = ChatTemplate::from_dir(empty.path()).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
}
