//! The match-expression language of `vswitchctl trace --match` and `capture`: syntax tree,
//! parser with positioned errors, and a printer whose output parses back to the same tree.
//!
//! OVS-flow-like predicates joined with tcpdump-like operators:
//!
//! ```text
//! expr    := and { ("or" | "||") and }
//! and     := unary { ("and" | "&&" | ",") unary }
//! unary   := ("not" | "!") unary | "(" expr ")" | pred
//! pred    := KEYWORD | FIELD "=" VALUE | FIELD "!=" VALUE
//! ```
//!
//! Keywords: `any`, `tcp`, `udp`, `icmp`, `icmp6`, `arp`, `ipv4` (`ip4`), `ipv6` (`ip6`),
//! `underlay` (received from another node), `traced` (received from a vswitch node that traced
//! it: see `TRACE_MARK`), `dropped`.
//! Fields: `port`, `in_port`, `out_port`, `network`, `peer`, `mac`, `eth_src`, `eth_dst`,
//! `eth_type`, `ip`, `ip_src`, `ip_dst` (IPv4 or IPv6, optional `/len`), `ip_proto`, `ttl`,
//! `l4_port`, `tp_src`, `tp_dst` (a port or `lo-hi`), `icmp_type`, `arp_op` (`request`,
//! `reply` or a number), `drop_reason` (a name from `vswitchctl stats`).
//! `not` binds tighter than `and`, `and` (and `,`) tighter than `or`. Values with spaces or
//! operator characters can be quoted: `port="a b"`. The empty expression matches everything.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use vswitch_config::MacAddr;

use crate::dataplane::DropReason;

/// Longest expression accepted (bytes).
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses and `not`.
pub const MAX_DEPTH: usize = 32;
/// Most predicates in one expression.
pub const MAX_PREDICATES: usize = 256;

/// A protocol keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Arp,
    Ipv4,
    Ipv6,
}

impl Proto {
    const ALL: [(Proto, &'static str); 7] = [
        (Proto::Tcp, "tcp"),
        (Proto::Udp, "udp"),
        (Proto::Icmp, "icmp"),
        (Proto::Icmp6, "icmp6"),
        (Proto::Arp, "arp"),
        (Proto::Ipv4, "ipv4"),
        (Proto::Ipv6, "ipv6"),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map_or("?", |e| e.1)
    }
}

/// An inclusive L4 port range (`lo == hi` for a single port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, p: u16) -> bool {
        (self.lo..=self.hi).contains(&p)
    }
}

/// One predicate, before names are resolved to dataplane indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    Any,
    /// Received on this port.
    InPort(String),
    /// Sent to this port (delivered, flooded to, or answered back to it).
    OutPort(String),
    /// Received on or sent to this port.
    Port(String),
    Network(String),
    /// Received from or encapsulated to this peer node.
    Peer(String),
    /// Received from the underlay.
    Underlay,
    /// Received from a vswitch node that marked it as traced.
    Traced,
    EthSrc(MacAddr),
    EthDst(MacAddr),
    Mac(MacAddr),
    EthType(u16),
    IpSrc(IpNet),
    IpDst(IpNet),
    Ip(IpNet),
    Proto(Proto),
    IpProto(u8),
    /// IPv4 TTL or IPv6 hop limit.
    Ttl(u8),
    TpSrc(PortRange),
    TpDst(PortRange),
    L4Port(PortRange),
    IcmpType(u8),
    ArpOp(u16),
    Dropped,
    DropReason(DropReason),
}

/// Byte range of a predicate in the source text (for resolution errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pred {
    pub test: Test,
    pub span: Span,
}

/// A parsed expression. `And`/`Or` always have two or more operands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Pred(Pred),
}

/// A syntax (or name) error at a position of the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at column {column})")]
pub struct ParseError {
    /// Byte offset of the offending text.
    pub at: usize,
    /// 1-based column (in characters) of `at`.
    pub column: usize,
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(input: &str, at: usize, message: impl Into<String>) -> ParseError {
        let at = at.min(input.len());
        let column = input.char_indices().take_while(|(i, _)| *i < at).count() + 1;
        ParseError {
            at,
            column,
            message: message.into(),
        }
    }

    /// The message, the expression, and a caret under the offending column.
    pub fn render(&self, input: &str) -> String {
        format!(
            "{}\n  {input}\n  {}^",
            self,
            " ".repeat(self.column.saturating_sub(1))
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a str),
    Quoted(String),
    LParen,
    RParen,
    Eq,
    Ne,
    Not,
    And,
    Or,
    End,
}

fn is_word_char(c: char) -> bool {
    !(c.is_whitespace() || "()=!,&|\"".contains(c))
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// The next token and the byte offset where it starts.
    fn next(&mut self) -> Result<(Tok<'a>, usize), ParseError> {
        let rest = &self.src[self.pos..];
        let trimmed = rest.trim_start();
        self.pos += rest.len() - trimmed.len();
        let at = self.pos;
        let mut chars = trimmed.chars();
        let Some(c) = chars.next() else {
            return Ok((Tok::End, at));
        };
        let two = |s: &mut Self, t| {
            s.pos += 2;
            Ok((t, at))
        };
        let one = |s: &mut Self, t| {
            s.pos += 1;
            Ok((t, at))
        };
        match (c, chars.next()) {
            ('(', _) => one(self, Tok::LParen),
            (')', _) => one(self, Tok::RParen),
            (',', _) => one(self, Tok::And),
            ('=', Some('=')) => two(self, Tok::Eq),
            ('=', _) => one(self, Tok::Eq),
            ('!', Some('=')) => two(self, Tok::Ne),
            ('!', _) => one(self, Tok::Not),
            ('&', Some('&')) => two(self, Tok::And),
            ('|', Some('|')) => two(self, Tok::Or),
            ('&' | '|', _) => Err(ParseError::new(
                self.src,
                at,
                format!("`{c}` alone is not an operator; use `{c}{c}`, `and` or `or`"),
            )),
            ('"', _) => self.quoted(at),
            _ => {
                let len = trimmed
                    .find(|c: char| !is_word_char(c))
                    .unwrap_or(trimmed.len());
                self.pos += len;
                let w = &trimmed[..len];
                Ok((
                    match w {
                        "and" => Tok::And,
                        "or" => Tok::Or,
                        "not" => Tok::Not,
                        _ => Tok::Word(w),
                    },
                    at,
                ))
            }
        }
    }

    fn quoted(&mut self, at: usize) -> Result<(Tok<'a>, usize), ParseError> {
        let mut out = String::new();
        let mut chars = self.src[at + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos = at + 1 + i + 1;
                    return Ok((Tok::Quoted(out), at));
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    _ => {
                        return Err(ParseError::new(
                            self.src,
                            at + 1 + i,
                            "only \\\" and \\\\ are escapes in a quoted value",
                        ))
                    }
                },
                c => out.push(c),
            }
        }
        Err(ParseError::new(self.src, at, "unterminated quoted value"))
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    tok: Tok<'a>,
    at: usize,
    depth: usize,
    preds: usize,
}

/// Parses an expression. The empty (or all-blank) expression is `any`.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.len() > MAX_LEN {
        return Err(ParseError::new(
            src,
            MAX_LEN,
            format!("expression longer than {MAX_LEN} bytes"),
        ));
    }
    if src.trim().is_empty() {
        return Ok(Expr::Pred(Pred {
            test: Test::Any,
            span: Span::default(),
        }));
    }
    let mut lex = Lexer { src, pos: 0 };
    let (tok, at) = lex.next()?;
    let mut p = Parser {
        lex,
        tok,
        at,
        depth: 0,
        preds: 0,
    };
    let e = p.or()?;
    match p.tok {
        Tok::End => Ok(e),
        Tok::RParen => Err(p.err("`)` without a matching `(`")),
        _ => Err(p.err(format!(
            "expected `and`, `or` or the end, found {}",
            p.describe()
        ))),
    }
}

impl<'a> Parser<'a> {
    fn bump(&mut self) -> Result<(), ParseError> {
        let (t, at) = self.lex.next()?;
        self.tok = t;
        self.at = at;
        Ok(())
    }

    fn err(&self, msg: impl Into<String>) -> ParseError {
        ParseError::new(self.lex.src, self.at, msg)
    }

    fn describe(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Quoted(q) => format!("\"{q}\""),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Eq => "`=`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::Not => "`not`".into(),
            Tok::And => "`and`".into(),
            Tok::Or => "`or`".into(),
            Tok::End => "the end".into(),
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut v = vec![self.and()?];
        while self.tok == Tok::Or {
            self.bump()?;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.pop().expect("one operand")
        } else {
            Expr::Or(v)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut v = vec![self.unary()?];
        loop {
            match self.tok {
                Tok::And => self.bump()?,
                Tok::Word(_) | Tok::Quoted(_) | Tok::LParen | Tok::Not => {
                    return Err(self.err(format!(
                        "expected `and`, `or`, `,` or the end before {}",
                        self.describe()
                    )))
                }
                _ => break,
            }
            v.push(self.unary()?);
        }
        Ok(if v.len() == 1 {
            v.pop().expect("one operand")
        } else {
            Expr::And(v)
        })
    }

    fn nest(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.tok {
            Tok::Not => {
                self.nest()?;
                self.bump()?;
                let e = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(e)))
            }
            Tok::LParen => {
                self.nest()?;
                let open = self.at;
                self.bump()?;
                let e = self.or()?;
                if self.tok != Tok::RParen {
                    return Err(if self.tok == Tok::End {
                        ParseError::new(self.lex.src, open, "`(` is never closed")
                    } else {
                        self.err(format!("expected `)`, found {}", self.describe()))
                    });
                }
                self.bump()?;
                self.depth -= 1;
                Ok(e)
            }
            Tok::Word(w) => {
                let start = self.at;
                self.preds += 1;
                if self.preds > MAX_PREDICATES {
                    return Err(self.err(format!("more than {MAX_PREDICATES} predicates")));
                }
                self.bump()?;
                self.pred(w, start)
            }
            _ => Err(self.err(format!(
                "expected a field, a keyword, `not` or `(`, found {}",
                self.describe()
            ))),
        }
    }

    fn pred(&mut self, name: &'a str, start: usize) -> Result<Expr, ParseError> {
        let negate = match self.tok {
            Tok::Eq => false,
            Tok::Ne => true,
            _ => {
                let test = keyword(name).ok_or_else(|| {
                    let msg = if name == "ip" {
                        "`ip` needs a value (`ip=ADDR[/LEN]`); for the protocol say `ipv4` or `ipv6`"
                            .to_string()
                    } else if FIELDS.contains(&name) {
                        format!("`{name}` needs a value: `{name}=...`")
                    } else {
                        unknown(name, "keyword or field")
                    };
                    ParseError::new(self.lex.src, start, msg)
                })?;
                let span = Span {
                    start,
                    end: start + name.len(),
                };
                return Ok(Expr::Pred(Pred { test, span }));
            }
        };
        if !FIELDS.contains(&name) {
            return Err(ParseError::new(
                self.lex.src,
                start,
                if keyword(name).is_some() {
                    format!("`{name}` is a keyword and takes no value")
                } else {
                    unknown(name, "field")
                },
            ));
        }
        self.bump()?;
        let (value, vat) = match &self.tok {
            Tok::Word(w) => (w.to_string(), self.at),
            Tok::Quoted(q) => (q.clone(), self.at),
            _ => return Err(self.err(format!("`{name}=` needs a value"))),
        };
        let test = field(name, &value).map_err(|m| ParseError::new(self.lex.src, vat, m))?;
        // The lexer stands right after the value token.
        let span = Span {
            start,
            end: self.lex.pos,
        };
        self.bump()?;
        let p = Expr::Pred(Pred { test, span });
        Ok(if negate { Expr::Not(Box::new(p)) } else { p })
    }
}

const FIELDS: &[&str] = &[
    "port",
    "in_port",
    "out_port",
    "network",
    "peer",
    "mac",
    "eth_src",
    "eth_dst",
    "eth_type",
    "ip",
    "ip_src",
    "ip_dst",
    "ip_proto",
    "ttl",
    "l4_port",
    "tp_src",
    "tp_dst",
    "icmp_type",
    "arp_op",
    "drop_reason",
];

const KEYWORDS: &[&str] = &[
    "any", "tcp", "udp", "icmp", "icmp6", "arp", "ipv4", "ipv6", "underlay", "traced", "dropped",
];

fn keyword(w: &str) -> Option<Test> {
    Some(match w {
        "any" => Test::Any,
        "underlay" => Test::Underlay,
        "traced" => Test::Traced,
        "dropped" => Test::Dropped,
        "ip4" => Test::Proto(Proto::Ipv4),
        "ip6" => Test::Proto(Proto::Ipv6),
        "icmpv6" => Test::Proto(Proto::Icmp6),
        _ => Test::Proto(Proto::ALL.iter().find(|(_, n)| *n == w)?.0),
    })
}

/// "unknown field `x`", with the closest known name when one is close.
fn unknown(w: &str, what: &str) -> String {
    let best = FIELDS
        .iter()
        .chain(KEYWORDS)
        .map(|c| (edit_distance(w, c), *c))
        .min();
    match best {
        Some((d, c)) if d <= 2 => format!("unknown {what} `{w}` (did you mean `{c}`?)"),
        _ => format!(
            "unknown {what} `{w}`; fields: {}; keywords: {}",
            FIELDS.join(" "),
            KEYWORDS.join(" ")
        ),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn number<T: TryFrom<u64>>(v: &str, what: &str) -> Result<T, String> {
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse::<u64>(),
    };
    n.ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("`{v}` is not a valid {what}"))
}

fn ip_net(v: &str) -> Result<IpNet, String> {
    let bad = || format!("`{v}` is not an IPv4/IPv6 address or CIDR");
    if v.contains('/') {
        v.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| bad())
    } else {
        v.parse::<IpAddr>().map(IpNet::from).map_err(|_| bad())
    }
}

fn port_range(v: &str) -> Result<PortRange, String> {
    let (lo, hi) = match v.split_once('-') {
        Some((a, b)) => (number(a, "port")?, number(b, "port")?),
        None => {
            let p = number(v, "port")?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!(
            "port range `{v}` is empty (low end above high end)"
        ));
    }
    Ok(PortRange { lo, hi })
}

fn mac(v: &str) -> Result<MacAddr, String> {
    v.parse()
        .map_err(|e: vswitch_config::MacParseError| e.to_string())
}

fn name_value(v: &str, what: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err(format!("empty {what}"));
    }
    Ok(v.to_string())
}

fn field(name: &str, v: &str) -> Result<Test, String> {
    Ok(match name {
        "port" => Test::Port(name_value(v, "port id")?),
        "in_port" => Test::InPort(name_value(v, "port id")?),
        "out_port" => Test::OutPort(name_value(v, "port id")?),
        "network" => Test::Network(name_value(v, "network name")?),
        "peer" => Test::Peer(name_value(v, "peer name")?),
        "mac" => Test::Mac(mac(v)?),
        "eth_src" => Test::EthSrc(mac(v)?),
        "eth_dst" => Test::EthDst(mac(v)?),
        "eth_type" => Test::EthType(number(v, "EtherType")?),
        "ip" => Test::Ip(ip_net(v)?),
        "ip_src" => Test::IpSrc(ip_net(v)?),
        "ip_dst" => Test::IpDst(ip_net(v)?),
        "ip_proto" => Test::IpProto(number(v, "IP protocol number (0-255)")?),
        "ttl" => Test::Ttl(number(v, "TTL (0-255)")?),
        "l4_port" => Test::L4Port(port_range(v)?),
        "tp_src" => Test::TpSrc(port_range(v)?),
        "tp_dst" => Test::TpDst(port_range(v)?),
        "icmp_type" => Test::IcmpType(number(v, "ICMP type (0-255)")?),
        "arp_op" => Test::ArpOp(match v {
            "request" => 1,
            "reply" => 2,
            _ => number(v, "ARP operation (request, reply or a number)")?,
        }),
        "drop_reason" => Test::DropReason(
            *DropReason::ALL
                .iter()
                .find(|r| r.name() == v)
                .ok_or_else(|| {
                    format!(
                        "unknown drop reason `{v}`; one of: {}",
                        DropReason::ALL
                            .iter()
                            .map(|r| r.name())
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                })?,
        ),
        _ => return Err(unknown(name, "field")),
    })
}

/// A name printed so that it lexes back as one value.
struct Value<'a>(&'a str);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let operator_word = matches!(s, "and" | "or" | "not");
        if !s.is_empty() && !operator_word && s.chars().all(is_word_char) {
            return f.write_str(s);
        }
        f.write_str("\"")?;
        for c in s.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

struct Net<'a>(&'a IpNet);

impl fmt::Display for Net<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Test::Any => f.write_str("any"),
            Test::InPort(p) => write!(f, "in_port={}", Value(p)),
            Test::OutPort(p) => write!(f, "out_port={}", Value(p)),
            Test::Port(p) => write!(f, "port={}", Value(p)),
            Test::Network(n) => write!(f, "network={}", Value(n)),
            Test::Peer(n) => write!(f, "peer={}", Value(n)),
            Test::Underlay => f.write_str("underlay"),
            Test::Traced => f.write_str("traced"),
            Test::EthSrc(m) => write!(f, "eth_src={m}"),
            Test::EthDst(m) => write!(f, "eth_dst={m}"),
            Test::Mac(m) => write!(f, "mac={m}"),
            Test::EthType(t) => write!(f, "eth_type=0x{t:04x}"),
            Test::IpSrc(n) => write!(f, "ip_src={}", Net(n)),
            Test::IpDst(n) => write!(f, "ip_dst={}", Net(n)),
            Test::Ip(n) => write!(f, "ip={}", Net(n)),
            Test::Proto(p) => f.write_str(p.name()),
            Test::IpProto(p) => write!(f, "ip_proto={p}"),
            Test::Ttl(t) => write!(f, "ttl={t}"),
            Test::TpSrc(r) => write!(f, "tp_src={r}"),
            Test::TpDst(r) => write!(f, "tp_dst={r}"),
            Test::L4Port(r) => write!(f, "l4_port={r}"),
            Test::IcmpType(t) => write!(f, "icmp_type={t}"),
            Test::ArpOp(o) => write!(f, "arp_op={o}"),
            Test::Dropped => f.write_str("dropped"),
            Test::DropReason(r) => write!(f, "drop_reason={}", r.name()),
        }
    }
}

impl fmt::Display for Expr {
    /// Prints compound operands in parentheses, so the text parses back to this very tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn operand(e: &Expr, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match e {
                Expr::Pred(_) | Expr::Not(_) => write!(f, "{e}"),
                _ => write!(f, "({e})"),
            }
        }
        let join = |v: &[Expr], op: &str, f: &mut fmt::Formatter<'_>| {
            for (i, e) in v.iter().enumerate() {
                if i > 0 {
                    f.write_str(op)?;
                }
                operand(e, f)?;
            }
            Ok(())
        };
        match self {
            Expr::Or(v) => join(v, " or ", f),
            Expr::And(v) => join(v, " and ", f),
            Expr::Not(e) => {
                f.write_str("not ")?;
                operand(e, f)
            }
            Expr::Pred(p) => write!(f, "{}", p.test),
        }
    }
}

impl Expr {
    /// Visits every predicate.
    pub fn preds(&self) -> Vec<&Pred> {
        let mut out = Vec::new();
        fn walk<'e>(e: &'e Expr, out: &mut Vec<&'e Pred>) {
            match e {
                Expr::Or(v) | Expr::And(v) => v.iter().for_each(|e| walk(e, out)),
                Expr::Not(e) => walk(e, out),
                Expr::Pred(p) => out.push(p),
            }
        }
        walk(self, &mut out);
        out
    }

    /// The same tree with every span zeroed (for comparing trees parsed from different text).
    pub fn without_spans(&self) -> Expr {
        match self {
            Expr::Or(v) => Expr::Or(v.iter().map(Expr::without_spans).collect()),
            Expr::And(v) => Expr::And(v.iter().map(Expr::without_spans).collect()),
            Expr::Not(e) => Expr::Not(Box::new(e.without_spans())),
            Expr::Pred(p) => Expr::Pred(Pred {
                test: p.test.clone(),
                span: Span::default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Expr {
        parse(s).unwrap_or_else(|e| panic!("{}", e.render(s)))
    }

    fn pred(t: Test) -> Expr {
        Expr::Pred(Pred {
            test: t,
            span: Span::default(),
        })
    }

    #[test]
    fn precedence_and_sugar() {
        let e = p("tcp and not tp_dst=22 or arp, underlay").without_spans();
        assert_eq!(
            e,
            Expr::Or(vec![
                Expr::And(vec![
                    pred(Test::Proto(Proto::Tcp)),
                    Expr::Not(Box::new(pred(Test::TpDst(PortRange { lo: 22, hi: 22 })))),
                ]),
                Expr::And(vec![pred(Test::Proto(Proto::Arp)), pred(Test::Underlay)]),
            ])
        );
        assert_eq!(
            p("ip_dst!=10.0.0.0/8 && !icmp || (udp)").to_string(),
            "(not ip_dst=10.0.0.0/8 and not icmp) or udp"
        );
        assert_eq!(p("  ").without_spans(), pred(Test::Any));
        assert_eq!(
            p("in_port=pod-a:eth1,ip=fe80::1/64,tp_src=1000-2000,arp_op=reply").to_string(),
            "in_port=pod-a:eth1 and ip=fe80::/64 and tp_src=1000-2000 and arp_op=2"
        );
        assert_eq!(
            p("port=\"a b\\\"c\" and eth_type=2048").to_string(),
            "port=\"a b\\\"c\" and eth_type=0x0800"
        );
        assert_eq!(
            p("drop_reason=spoofed_src_ip").without_spans(),
            pred(Test::DropReason(DropReason::SpoofedSrcIp))
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        for (src, col, needle) in [
            ("tcp and ip_sr=1.2.3.4", 9, "did you mean `ip_src`"),
            ("tcp udp", 5, "expected `and`"),
            ("(tcp or udp", 1, "never closed"),
            ("tcp)", 4, "without a matching"),
            ("ip_dst=10.0.0.300", 8, "not an IPv4/IPv6"),
            ("tp_dst=9-1", 8, "empty"),
            ("ip", 1, "ipv4"),
            ("mac", 1, "needs a value"),
            ("tcp=1", 1, "keyword"),
            ("tcp & udp", 5, "`&&`"),
            ("port=", 6, "needs a value"),
            ("port=\"x", 6, "unterminated"),
            ("drop_reason=nope", 13, "one of:"),
            ("and", 1, "expected a field"),
            ("port=\"é\" and bogus", 14, "unknown"),
        ] {
            let e = parse(src).expect_err(src);
            assert_eq!(e.column, col, "{src}: {e}");
            assert!(e.message.contains(needle), "{src}: {e}");
            assert!(e.render(src).ends_with('^'));
        }
        let deep = "(".repeat(MAX_DEPTH + 1) + "tcp" + &")".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).unwrap_err().message.contains("nested"));
        let nots = "not ".repeat(MAX_DEPTH + 1) + "tcp";
        assert!(parse(&nots).unwrap_err().message.contains("nested"));
        let many = vec!["tcp"; MAX_PREDICATES + 1].join(",");
        assert!(parse(&many).unwrap_err().message.contains("predicates"));
        assert!(parse(&"x".repeat(MAX_LEN + 1)).is_err());
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9:._-]{0,12}",
            "[ -~]{1,8}",
            Just("and".to_string()),
        ]
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32)
                .prop_map(|(a, l)| IpNet::new(IpAddr::from(a), l).unwrap().trunc()),
            (any::<[u8; 16]>(), 0u8..=128)
                .prop_map(|(a, l)| IpNet::new(IpAddr::from(a), l).unwrap().trunc()),
        ]
    }

    fn arb_range() -> impl Strategy<Value = PortRange> {
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| PortRange {
            lo: a.min(b),
            hi: a.max(b),
        })
    }

    fn arb_test() -> impl Strategy<Value = Test> {
        let mac = any::<[u8; 6]>().prop_map(MacAddr);
        prop_oneof![
            Just(Test::Any),
            arb_name().prop_map(Test::InPort),
            arb_name().prop_map(Test::OutPort),
            arb_name().prop_map(Test::Port),
            arb_name().prop_map(Test::Network),
            arb_name().prop_map(Test::Peer),
            Just(Test::Underlay),
            Just(Test::Traced),
            mac.clone().prop_map(Test::EthSrc),
            mac.clone().prop_map(Test::EthDst),
            mac.prop_map(Test::Mac),
            any::<u16>().prop_map(Test::EthType),
            arb_net().prop_map(Test::IpSrc),
            arb_net().prop_map(Test::IpDst),
            arb_net().prop_map(Test::Ip),
            (0..Proto::ALL.len()).prop_map(|i| Test::Proto(Proto::ALL[i].0)),
            any::<u8>().prop_map(Test::IpProto),
            any::<u8>().prop_map(Test::Ttl),
            arb_range().prop_map(Test::TpSrc),
            arb_range().prop_map(Test::TpDst),
            arb_range().prop_map(Test::L4Port),
            any::<u8>().prop_map(Test::IcmpType),
            any::<u16>().prop_map(Test::ArpOp),
            Just(Test::Dropped),
            (0..DropReason::COUNT).prop_map(|i| Test::DropReason(DropReason::ALL[i])),
        ]
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        arb_test().prop_map(pred).prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
                proptest::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
                inner.prop_map(|e| Expr::Not(Box::new(e))),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_near_misses(parts in proptest::collection::vec(prop_oneof![
            Just("tcp"), Just("("), Just(")"), Just("not"), Just("!"), Just("="), Just("!="),
            Just(","), Just("&&"), Just("||"), Just("ip="), Just("1.2.3.4"), Just("\""),
            Just("port"), Just("\\"), Just("é"), Just(" "),
        ], 0..16)) {
            let s: String = parts.concat();
            if let Err(e) = parse(&s) {
                prop_assert!(e.at <= s.len());
                let _ = e.render(&s);
            }
        }

        #[test]
        fn printed_trees_parse_back(e in arb_expr()) {
            let text = e.to_string();
            let back = parse(&text).map_err(|err| TestCaseError::fail(err.render(&text)))?;
            prop_assert_eq!(back.without_spans(), e);
        }
    }
}
