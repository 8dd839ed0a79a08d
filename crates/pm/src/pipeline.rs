//! Pipeline text: `name{key=value,...},name2`. Parsing keeps byte spans so errors can point at the
//! offending text; printing gives the canonical form.
//!
//! Grammar: `pipeline := ws (element (ws ',' ws element)*)? ws`, `element := name ('{' opts? '}')?`,
//! `opts := key '=' value (',' key '=' value)*`, names and keys `[A-Za-z0-9_-]+`, values either a
//! double-quoted string or any text up to the next `,` or `}` (trimmed).

use std::fmt;

/// One element of a parsed pipeline, with the spans of its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub name: String,
    pub name_span: (usize, usize),
    pub options: Vec<(String, String, (usize, usize))>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineError {
    pub text: String,
    pub span: (usize, usize),
    pub message: String,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = self.span;
        let caret = format!(
            "{}{}",
            " ".repeat(self.text[..a.min(self.text.len())].chars().count()),
            "^".repeat((b.saturating_sub(a)).max(1))
        );
        write!(f, "bad pipeline: {} (at column {})\n  {}\n  {}", self.message, a + 1, self.text, caret)
    }
}

impl std::error::Error for PipelineError {}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }
    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += self.peek().unwrap().len_utf8();
        }
    }
    fn err(&self, span: (usize, usize), message: impl Into<String>) -> PipelineError {
        PipelineError { text: self.text.to_string(), span, message: message.into() }
    }
    fn ident(&mut self, what: &str) -> Result<(String, (usize, usize)), PipelineError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.pos += 1;
        }
        if self.pos == start {
            let found = self.peek().map(|c| format!("'{c}'")).unwrap_or_else(|| "end of text".into());
            return Err(self.err((start, start + 1), format!("expected {what}, found {found}")));
        }
        Ok((self.text[start..self.pos].to_string(), (start, self.pos)))
    }
    fn value(&mut self) -> Result<(String, usize), PipelineError> {
        let start = self.pos;
        if self.peek() == Some('"') {
            self.pos += 1;
            let mut out = String::new();
            loop {
                match self.peek() {
                    None => return Err(self.err((start, self.pos), "unterminated quoted value")),
                    Some('"') => {
                        self.pos += 1;
                        return Ok((out, self.pos));
                    }
                    // `\"` is a quote and `\\` a backslash; any other backslash is literal.
                    Some('\\') if self.text[self.pos + 1..].starts_with(['"', '\\']) => {
                        out.push(self.text[self.pos + 1..].chars().next().unwrap_or('"'));
                        self.pos += 2;
                    }
                    Some(c) => {
                        out.push(c);
                        self.pos += c.len_utf8();
                    }
                }
            }
        }
        while let Some(c) = self.peek() {
            if c == ',' || c == '}' || c == '{' {
                break;
            }
            self.pos += c.len_utf8();
        }
        Ok((self.text[start..self.pos].trim().to_string(), self.pos))
    }
}

/// Parse pipeline text into elements (names are not checked here; see [`crate::PassManager::parse`]).
pub fn parse_pipeline(text: &str) -> Result<Vec<Element>, PipelineError> {
    let mut c = Cursor { text, pos: 0 };
    let mut out = Vec::new();
    c.ws();
    if c.peek().is_none() {
        return Ok(out);
    }
    loop {
        c.ws();
        let (name, name_span) = c.ident("a pass name")?;
        let mut options = Vec::new();
        c.ws();
        if c.peek() == Some('{') {
            let open = c.pos;
            c.pos += 1;
            c.ws();
            if c.peek() == Some('}') {
                c.pos += 1;
            } else {
                loop {
                    c.ws();
                    let (key, kspan) = c.ident("an option name")?;
                    c.ws();
                    if c.peek() != Some('=') {
                        return Err(c.err((c.pos, c.pos + 1), format!("expected '=' after option '{key}'")));
                    }
                    c.pos += 1;
                    c.ws();
                    let quoted = c.peek() == Some('"');
                    let (value, end) = c.value()?;
                    // `key=""` is an explicit empty value (the canonical form prints empty values so).
                    if value.is_empty() && !quoted {
                        return Err(c.err(kspan, format!("option '{key}' has no value")));
                    }
                    if options.iter().any(|(k, _, _): &(String, String, _)| *k == key) {
                        return Err(c.err(kspan, format!("option '{key}' is given twice")));
                    }
                    options.push((key, value, (kspan.0, end)));
                    c.ws();
                    match c.peek() {
                        Some(',') => c.pos += 1,
                        Some('}') => {
                            c.pos += 1;
                            break;
                        }
                        _ => return Err(c.err((open, c.pos.max(open + 1)), "unclosed '{': expected ',' or '}'")),
                    }
                }
            }
        }
        out.push(Element { name, name_span, options });
        c.ws();
        match c.peek() {
            None => return Ok(out),
            Some(',') => c.pos += 1,
            Some(ch) => return Err(c.err((c.pos, c.pos + 1), format!("expected ',' between passes, found '{ch}'"))),
        }
    }
}

/// Print parsed elements back as pipeline text (`name{key=value,...}`, values quoted when needed); parsing
/// the result gives the same names and options.
pub fn print_pipeline(elements: &[Element]) -> String {
    let one = |e: &Element| {
        if e.options.is_empty() {
            return e.name.clone();
        }
        let body: Vec<String> = e.options.iter().map(|(k, v, _)| format!("{k}={}", quote_value(v))).collect();
        format!("{}{{{}}}", e.name, body.join(","))
    };
    elements.iter().map(one).collect::<Vec<_>>().join(",")
}

/// Quote a value when it would not survive parsing bare.
pub fn quote_value(v: &str) -> String {
    if v.is_empty() || v.contains([',', '{', '}', '"']) || v.trim() != v {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_elements_and_options() {
        let p = parse_pipeline(" score{method=wanda}, nm-legalize{n=2, m=4},dead-channel-elim ").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "nm-legalize");
        assert_eq!(p[1].options[1].0, "m");
        assert_eq!(p[1].options[1].1, "4");
        assert!(p[2].options.is_empty());
    }

    #[test]
    fn quoted_values_round_trip_backslashes() {
        // Found by the `pipeline` fuzz target: a quoted value ending in a backslash printed as `"...\"`.
        for v in ["r\"\\", "a\\", "\\\"", "x,\\y"] {
            let text = format!("a{{x={}}}", quote_value(v));
            assert_eq!(parse_pipeline(&text).unwrap()[0].options[0].1, v, "{text}");
        }
    }

    #[test]
    fn quoted_values_keep_commas() {
        let p = parse_pipeline(r#"mask{names="a.*,b.*",sparsity=0.5}"#).unwrap();
        assert_eq!(p[0].options[0].1, "a.*,b.*");
    }

    #[test]
    fn errors_point_at_the_span() {
        let e = parse_pipeline("score{method=l1,mask").unwrap_err();
        assert!(e.message.contains("'='"), "{e}");
        let e = parse_pipeline("score{method=l1} mask").unwrap_err();
        assert_eq!(e.span.0, 17);
        assert!(e.to_string().contains("^"));
        assert!(parse_pipeline("score{method=}").is_err());
        assert_eq!(parse_pipeline(r#"mask{exclude=""}"#).unwrap()[0].options[0].1, "");
        assert!(parse_pipeline("a{x=1,x=2}").is_err());
        assert!(parse_pipeline(",").is_err());
        assert!(parse_pipeline("").unwrap().is_empty());
    }
}
