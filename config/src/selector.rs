//! Calico's label selector syntax, as IP pools use it in `spec.nodeSelector`.
//!
//! Grammar (whitespace between tokens is free):
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" expr ")" | "all()" | "has(" key ")"
//!          | key ( "==" | "!=" ) string
//!          | key ( "in" | "not in" ) "{" [ string ( "," string )* ] "}"
//! string  := '"' … '"' | "'" … "'"
//! key     := [A-Za-z0-9_./-]+
//! ```
//!
//! An empty selector means `all()`, as in Calico. A parse error carries the byte offset where
//! the parser gave up, so an operator can see which part of a long selector is wrong.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

/// Why a selector did not parse, with the byte offset of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {pos}: {msg}")]
pub struct SelectorError {
    pub pos: usize,
    pub msg: String,
}

impl Selector {
    /// Parses `s`; an empty (or blank) selector is `all()`.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { s, pos: 0 };
        p.skip_ws();
        if p.pos == s.len() {
            return Ok(Selector::All);
        }
        let e = p.or()?;
        p.skip_ws();
        if p.pos != s.len() {
            return Err(p.error("unexpected input after the end of the expression"));
        }
        Ok(e)
    }

    /// Whether labels `l` satisfy the selector. A missing key never equals a value, and
    /// satisfies `!=` and `not in` (Calico's semantics).
    pub fn matches(&self, l: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => l.contains_key(k),
            Selector::Eq(k, v) => l.get(k) == Some(v),
            Selector::Ne(k, v) => l.get(k) != Some(v),
            Selector::In(k, vs) => l.get(k).is_some_and(|x| vs.contains(x)),
            Selector::NotIn(k, vs) => !l.get(k).is_some_and(|x| vs.contains(x)),
            Selector::Not(e) => !e.matches(l),
            Selector::And(a, b) => a.matches(l) && b.matches(l),
            Selector::Or(a, b) => a.matches(l) || b.matches(l),
        }
    }
}

fn quote(v: &str) -> String {
    if v.contains('"') {
        format!("'{v}'")
    } else {
        format!("\"{v}\"")
    }
}

impl fmt::Display for Selector {
    /// Canonical text, fully parenthesised where precedence could matter; parses back to itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |vs: &[String]| vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ");
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, vs) => write!(f, "{k} in {{{}}}", set(vs)),
            Selector::NotIn(k, vs) => write!(f, "{k} not in {{{}}}", set(vs)),
            Selector::Not(e) => write!(f, "!({e})"),
            Selector::And(a, b) => write!(f, "({a} && {b})"),
            Selector::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

impl Parser<'_> {
    fn error(&self, msg: impl Into<String>) -> SelectorError {
        SelectorError {
            pos: self.pos,
            msg: msg.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }

    /// Consumes `tok` (after whitespace) if it comes next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.error(format!("expected {tok:?}")))
        }
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Selector::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut e = self.unary()?;
        while self.eat("&&") {
            e = Selector::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        // "!=" never starts an operand, so a leading '!' is always negation.
        if self.eat("!") {
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !is_key_char(c))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a label key"));
        }
        let k = self.rest()[..len].to_string();
        self.pos += len;
        Ok(k)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let q = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.error("expected a quoted string")),
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(q) else {
            return Err(self.error("unterminated string"));
        };
        let v = body[..end].to_string();
        self.pos += end + 2;
        Ok(v)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect("{")?;
        let mut vs = Vec::new();
        if self.eat("}") {
            return Ok(vs);
        }
        loop {
            vs.push(self.string()?);
            if self.eat("}") {
                return Ok(vs);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.eat("(") {
            let e = self.or()?;
            self.expect(")")?;
            return Ok(e);
        }
        let start = self.pos;
        if self.eat("all") {
            if self.eat("(") {
                self.expect(")")?;
                return Ok(Selector::All);
            }
            self.pos = start;
        } else if self.eat("has") {
            if self.eat("(") {
                let k = self.key()?;
                self.expect(")")?;
                return Ok(Selector::Has(k));
            }
            self.pos = start;
        }
        if self.rest().is_empty() {
            return Err(self.error("unexpected end of selector"));
        }
        let k = self.key()?;
        if self.eat("==") {
            return Ok(Selector::Eq(k, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(k, self.string()?));
        }
        let at = self.pos;
        if self.eat("not") {
            let after = self.pos;
            if self.rest().starts_with(char::is_whitespace) && self.eat("in") {
                return Ok(Selector::NotIn(k, self.set()?));
            }
            self.pos = after;
        }
        self.pos = at;
        if self.eat("in") {
            return Ok(Selector::In(k, self.set()?));
        }
        Err(self.error("expected ==, !=, in or not in"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn calico_examples_match() {
        let l = labels(&[("rack", "0"), ("zone", "a"), ("kubernetes.io/os", "linux")]);
        for (s, want) in [
            ("", true),
            ("all()", true),
            ("rack == \"0\"", true),
            ("rack == '1'", false),
            ("rack != \"1\"", true),
            ("missing != \"1\"", true),
            ("has(zone)", true),
            ("!has(zone)", false),
            ("rack in {\"0\", \"2\"}", true),
            ("rack not in {\"0\"}", false),
            ("missing not in {\"0\"}", true),
            ("rack == \"0\" && zone == \"b\"", false),
            ("rack == \"1\" || zone == \"a\"", true),
            (
                "!(rack == \"1\" || zone == \"b\") && has(kubernetes.io/os)",
                true,
            ),
            ("rack in {}", false),
        ] {
            let sel = Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.matches(&l), want, "{s}");
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let s = Selector::parse("a == 'x' || b == 'y' && c == 'z'").unwrap();
        assert!(matches!(s, Selector::Or(_, _)));
        assert!(s.matches(&labels(&[("a", "x")])));
        assert!(!s.matches(&labels(&[("b", "y")])));
    }

    #[test]
    fn errors_carry_the_position() {
        for (s, pos) in [
            ("rack ==", 7),
            ("rack = \"0\"", 5),
            ("rack == \"0", 8),
            ("(rack == \"0\"", 12),
            ("rack == \"0\" &&", 14),
            ("rack == \"0\" junk", 12),
            ("has(", 4),
            ("rack in {\"0\" \"1\"}", 13),
            ("== \"0\"", 0),
        ] {
            let e = Selector::parse(s).expect_err(s);
            assert_eq!(e.pos, pos, "{s}: {e}");
        }
    }

    fn arb_key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9./_-]{0,6}"
    }

    fn arb_val() -> impl Strategy<Value = String> {
        "[a-z0-9 ]{0,4}"
    }

    fn arb_sel() -> impl Strategy<Value = Selector> {
        let leaf = prop_oneof![
            Just(Selector::All),
            arb_key().prop_map(Selector::Has),
            (arb_key(), arb_val()).prop_map(|(k, v)| Selector::Eq(k, v)),
            (arb_key(), arb_val()).prop_map(|(k, v)| Selector::Ne(k, v)),
            (arb_key(), prop::collection::vec(arb_val(), 0..3))
                .prop_map(|(k, v)| Selector::In(k, v)),
            (arb_key(), prop::collection::vec(arb_val(), 0..3))
                .prop_map(|(k, v)| Selector::NotIn(k, v)),
        ];
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Selector::Not(Box::new(e))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Selector::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| Selector::Or(Box::new(a), Box::new(b))),
            ]
        })
    }

    proptest! {
        #[test]
        fn display_parses_back(sel in arb_sel()) {
            let text = sel.to_string();
            prop_assert_eq!(Selector::parse(&text), Ok(sel), "{}", text);
        }

        #[test]
        fn never_panics(s in "[a-z()!&|=\"'{}, ]{0,40}") {
            if let Err(e) = Selector::parse(&s) {
                prop_assert!(e.pos <= s.len());
            }
        }
    }
}
