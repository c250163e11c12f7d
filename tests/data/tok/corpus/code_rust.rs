use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Token<'a> {
    Word(&'a str),
    Number(i64),
    Punct(char),
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(w) => write!(f, "{w}"),
            Token::Number(n) => write!(f, "{n:>8}"),
            Token::Punct(c) => write!(f, "'{c}'"),
        }
    }
}

pub fn count(words: &[&str]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for w in words.iter().filter(|w| !w.is_empty()) {
        *m.entry(w.to_lowercase()).or_insert(0usize) += 1;
    }
    m
}
