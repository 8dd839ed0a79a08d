//! Typed access to a pipeline element's options. Each pass reads its options with `take_*` and calls
//! [`Options::finish`], which rejects unknown keys and lists the valid ones.

use crate::pipeline::PipelineError;

/// One option a pass accepts: for `list-passes` and error messages.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// The options of one pipeline element, consumed by the pass's builder.
pub struct Options<'a> {
    pub(crate) pass: String,
    pub(crate) text: &'a str,
    pub(crate) items: Vec<(String, String, (usize, usize), bool)>,
    pub(crate) specs: &'static [OptionSpec],
}

impl<'a> Options<'a> {
    /// Options from plain key/value pairs (for embedders that build passes without pipeline text).
    pub fn from_pairs(pass: &str, pairs: &[(&str, &str)], specs: &'static [OptionSpec]) -> Options<'static> {
        Options {
            pass: pass.to_string(),
            text: "",
            items: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string(), (0, 0), false)).collect(),
            specs,
        }
    }

    pub fn error(&self, span: (usize, usize), message: impl Into<String>) -> PipelineError {
        PipelineError { text: self.text.to_string(), span, message: message.into() }
    }

    /// The pass these options belong to.
    pub fn pass_name(&self) -> &str {
        &self.pass
    }

    /// Whether the pipeline text gives `key` (taken or not).
    pub fn given(&self, key: &str) -> bool {
        self.items.iter().any(|i| i.0 == key)
    }

    fn take(&mut self, key: &str) -> Option<(String, (usize, usize))> {
        let item = self.items.iter_mut().find(|i| i.0 == key && !i.3)?;
        item.3 = true;
        Some((item.1.clone(), item.2))
    }

    /// Raw string value, if given.
    pub fn take_str(&mut self, key: &str) -> Option<String> {
        self.take(key).map(|(v, _)| v)
    }

    fn parse<T: std::str::FromStr>(&mut self, key: &str, what: &str) -> Result<Option<T>, PipelineError> {
        match self.take(key) {
            None => Ok(None),
            Some((v, span)) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| self.error(span, format!("{}: option '{key}' must be {what}, got '{v}'", self.pass))),
        }
    }

    pub fn take_f64(&mut self, key: &str, default: f64) -> Result<f64, PipelineError> {
        Ok(self.parse::<f64>(key, "a number")?.unwrap_or(default))
    }

    /// A number in [lo, hi].
    pub fn take_range(&mut self, key: &str, default: f64, lo: f64, hi: f64) -> Result<f64, PipelineError> {
        let span = self.items.iter().find(|i| i.0 == key).map(|i| i.2).unwrap_or((0, 0));
        let v = self.take_f64(key, default)?;
        if !(lo..=hi).contains(&v) {
            return Err(
                self.error(span, format!("{}: option '{key}' must be between {lo} and {hi}, got {v}", self.pass))
            );
        }
        Ok(v)
    }

    pub fn take_usize(&mut self, key: &str, default: usize) -> Result<usize, PipelineError> {
        Ok(self.parse::<usize>(key, "a whole number")?.unwrap_or(default))
    }

    pub fn take_opt_usize(&mut self, key: &str) -> Result<Option<usize>, PipelineError> {
        self.parse::<usize>(key, "a whole number")
    }

    pub fn take_bool(&mut self, key: &str, default: bool) -> Result<bool, PipelineError> {
        Ok(self.parse::<bool>(key, "true or false")?.unwrap_or(default))
    }

    /// One of a fixed set of words.
    pub fn take_choice(&mut self, key: &str, choices: &[&str], default: &str) -> Result<String, PipelineError> {
        match self.take(key) {
            None => Ok(default.to_string()),
            Some((v, span)) if choices.contains(&v.as_str()) => {
                let _ = span;
                Ok(v)
            }
            Some((v, span)) => Err(self.error(
                span,
                format!("{}: option '{key}' must be one of {}, got '{v}'", self.pass, choices.join(", ")),
            )),
        }
    }

    /// Error on any option not consumed, listing the valid names.
    pub fn finish(self) -> Result<(), PipelineError> {
        if let Some(item) = self.items.iter().find(|i| !i.3) {
            let valid: Vec<&str> = self.specs.iter().map(|s| s.name).collect();
            let valid = if valid.is_empty() { "none".to_string() } else { valid.join(", ") };
            return Err(self.error(
                item.2,
                format!("unknown option '{}' for pass '{}' (valid options: {valid})", item.0, self.pass),
            ));
        }
        Ok(())
    }
}
