//! Name patterns for scoping: `*` matches any run of characters, `?` one character, and `|` separates
//! alternatives (`encoder.*|decoder.*`). Everything else matches itself.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    alternatives: Vec<Vec<char>>,
}

impl Glob {
    pub fn new(text: &str) -> Glob {
        Glob { text: text.to_string(), alternatives: text.split('|').map(|a| a.chars().collect()).collect() }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        self.alternatives.iter().any(|p| matches(p, &name))
    }
}

/// Iterative wildcard match with single-star backtracking (linear in practice, no recursion).
fn matches(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn wildcards_and_alternatives() {
        let g = Glob::new("blocks.*.mlp*|head");
        assert!(g.matches("blocks.0.mlp.fc1"));
        assert!(g.matches("head"));
        assert!(!g.matches("blocks.0.attn"));
        assert!(!g.matches("heads"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a?c").matches("abc"));
        assert!(!Glob::new("a?c").matches("ac"));
    }
}
