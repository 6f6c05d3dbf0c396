//! A chat template (the input, as UTF-8) compiled and rendered with a short conversation:
//! Ok or a typed error, whatever the template does.
#![no_main]

use kiln::{ChatTemplate, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    let Ok(template) = ChatTemplate::new(&source, "<s>", "</s>") else {
        return;
    };
    let messages = [
        Message::system("Be brief."),
        Message::user("Hi"),
        Message::assistant("Hello!"),
        Message::user("Bye"),
    ];
    let _ = template.render(&messages, true, None, None);
    let _ = template.render(&messages[1..2], false, None, None);
});
