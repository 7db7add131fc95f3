//! How an error and its chain of causes read as text: in log lines, in the control socket's
//! error responses and on the CLI. One rule for all three: each cause once, none empty (libp2p's
//! transport errors print nothing of their own, or repeat their source inside their text).

use std::error::Error;

/// The texts of `error` and of each of its causes, outermost first, leaving out a cause whose
/// text is empty or already contained in one before it.
pub fn causes(error: &dyn Error) -> Vec<String> {
    let mut texts = vec![error.to_string().trim_end().to_owned()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string().trim_end().to_owned();
        if !text.is_empty() && !texts.iter().any(|earlier| earlier.contains(&text)) {
            texts.push(text);
        }
        source = cause.source();
    }
    texts
}

/// `error: cause: cause` on one line, with [`causes`]' rule (tested through the CLI's
/// `error_report` and the control server's error responses).
pub fn one_line(error: &dyn Error) -> String {
    causes(error).join(": ")
}
