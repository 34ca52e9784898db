//! The policy language: a delegation's `pol`, a list of statements every
//! invocation it proves must satisfy on its `args`.
//!
//! Statements: `["==", sel, value]`, `["!=", sel, value]`, `["<"|"<="|">"|
//! ">=", sel, number]`, `["like", sel, glob]` (`*` any run, `\*` a star),
//! `["not", stmt]`, `["and", [stmt...]]`, `["or", [stmt...]]` (both true
//! when empty, as the test vectors have it), `["all", sel, stmt]` and
//! `["any", sel, stmt]` (over a list's items or a map's values, each the
//! statement's `.`).
//!
//! Selectors, jq-like: `.` (the value itself), `.name`, `.["any key"]`,
//! `[N]` (negative from the end), `[A:B]` (a slice), each optionally
//! followed by `?`, which makes a missing value null instead of no value.
//! `[]` (every item) may end the selector of `all` and `any` only. A
//! statement whose selector finds no value is false; numbers compare by
//! value (`1 == 1.0`).

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;

/// `policy_statements_max`: the most statements one policy may hold, nested ones counted.
pub const POLICY_STATEMENTS_MAX: usize = 1024;
/// `policy_depth_max`: how deep statements may nest.
pub const POLICY_DEPTH_MAX: usize = 32;
/// `selector_bytes_max`: the longest selector.
pub const SELECTOR_BYTES_MAX: usize = 1024;

/// What is wrong with a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a policy is a list of statements")]
    NotList,
    #[error("malformed statement: {0}")]
    Statement(String),
    #[error("malformed selector {selector:?}: {reason}")]
    Selector { selector: String, reason: String },
    #[error("a policy of more than policy_statements_max ({POLICY_STATEMENTS_MAX}) statements")]
    TooManyStatements,
    #[error("statements nested deeper than policy_depth_max ({POLICY_DEPTH_MAX})")]
    TooDeep,
}

/// A parsed policy, with what it was written as.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    statements: Vec<Statement>,
    source: Ipld,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Debug, Clone, PartialEq)]
enum Statement {
    Equal(Selector, Ipld),
    NotEqual(Selector, Ipld),
    Compare(Order, Selector, f64),
    Like(Selector, Vec<Glob>),
    Not(Box<Statement>),
    And(Vec<Statement>),
    Or(Vec<Statement>),
    All(Selector, Box<Statement>),
    Any(Selector, Box<Statement>),
}

#[derive(Debug, Clone, PartialEq)]
enum Glob {
    Char(char),
    Star,
}

#[derive(Debug, Clone, PartialEq)]
struct Selector {
    segments: Vec<Segment>,
    /// Ends with `[]`: the values of what the rest selects.
    every: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Slice(Option<i64>, Option<i64>),
}

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    step: Step,
    optional: bool,
}

impl Policy {
    /// Parses a `pol` value.
    pub fn parse(value: &Ipld) -> Result<Policy, PolicyError> {
        let Ipld::List(items) = value else {
            return Err(PolicyError::NotList);
        };
        let mut budget = POLICY_STATEMENTS_MAX;
        let statements = items
            .iter()
            .map(|item| parse_statement(item, 0, &mut budget))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            statements,
            source: value.clone(),
        })
    }

    /// The policy that allows everything: `[]`.
    pub fn empty() -> Policy {
        Policy {
            statements: Vec::new(),
            source: Ipld::List(Vec::new()),
        }
    }

    pub fn to_ipld(&self) -> Ipld {
        self.source.clone()
    }

    /// Whether `args` satisfies every statement.
    pub fn matches(&self, args: &Ipld) -> bool {
        self.statements.iter().all(|s| s.holds(args))
    }
}

fn bad(reason: impl Into<String>) -> PolicyError {
    PolicyError::Statement(reason.into())
}

fn parse_statement(
    value: &Ipld,
    depth: usize,
    budget: &mut usize,
) -> Result<Statement, PolicyError> {
    if depth >= POLICY_DEPTH_MAX {
        return Err(PolicyError::TooDeep);
    }
    *budget = budget
        .checked_sub(1)
        .ok_or(PolicyError::TooManyStatements)?;
    let Ipld::List(parts) = value else {
        return Err(bad("a statement is a list"));
    };
    let (Some(Ipld::String(operator)), rest) = (parts.first(), parts.get(1..).unwrap_or(&[]))
    else {
        return Err(bad("a statement starts with its operator"));
    };
    let nested = |value: &Ipld, budget: &mut usize| parse_statement(value, depth + 1, budget);
    let statement = match (operator.as_str(), rest) {
        ("==", [s, v]) => Statement::Equal(selector(s, false)?, v.clone()),
        ("!=", [s, v]) => Statement::NotEqual(selector(s, false)?, v.clone()),
        (op @ ("<" | "<=" | ">" | ">="), [s, v]) => {
            Statement::Compare(order(op), selector(s, false)?, number(v)?)
        }
        ("like", [s, Ipld::String(pattern)]) => {
            Statement::Like(selector(s, false)?, glob(pattern)?)
        }
        ("not", [inner]) => Statement::Not(Box::new(nested(inner, budget)?)),
        (op @ ("and" | "or"), [Ipld::List(items)]) => {
            let items = items
                .iter()
                .map(|item| nested(item, budget))
                .collect::<Result<_, _>>()?;
            if op == "and" {
                Statement::And(items)
            } else {
                Statement::Or(items)
            }
        }
        (op @ ("all" | "any"), [s, inner]) => {
            let (s, inner) = (selector(s, true)?, Box::new(nested(inner, budget)?));
            if op == "all" {
                Statement::All(s, inner)
            } else {
                Statement::Any(s, inner)
            }
        }
        (op, _) => return Err(bad(format!("unknown operator or wrong arguments: {op:?}"))),
    };
    Ok(statement)
}

fn order(operator: &str) -> Order {
    match operator {
        "<" => Order::Less,
        "<=" => Order::LessOrEqual,
        ">" => Order::Greater,
        _ => Order::GreaterOrEqual,
    }
}

fn number(value: &Ipld) -> Result<f64, PolicyError> {
    as_number(value).ok_or_else(|| bad("an order compares with a number"))
}

fn as_number(value: &Ipld) -> Option<f64> {
    match value {
        #[allow(clippy::cast_precision_loss)]
        Ipld::Integer(n) => Some(*n as f64),
        Ipld::Float(f) => Some(*f),
        _ => None,
    }
}

fn glob(pattern: &str) -> Result<Vec<Glob>, PolicyError> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' => Glob::Star,
            '\\' => Glob::Char(
                chars
                    .next()
                    .ok_or_else(|| bad("a like pattern ends in \\"))?,
            ),
            c => Glob::Char(c),
        });
    }
    Ok(out)
}

/// Whether `text` matches `pattern` whole (a table over both, so no
/// pattern takes more than len(pattern) × len(text) steps).
fn like(pattern: &[Glob], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    // matched[j]: the pattern so far matches text[..j].
    let mut matched = vec![false; text.len() + 1];
    matched[0] = true;
    for part in pattern {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            next[j] = match part {
                Glob::Star => matched[j] || (j > 0 && next[j - 1]),
                Glob::Char(c) => j > 0 && matched[j - 1] && text[j - 1] == *c,
            };
        }
        matched = next;
    }
    matched[text.len()]
}

fn selector(value: &Ipld, quantifier: bool) -> Result<Selector, PolicyError> {
    let Ipld::String(text) = value else {
        return Err(bad("a selector is a string"));
    };
    let fail = |reason: &str| PolicyError::Selector {
        selector: text.clone(),
        reason: reason.to_owned(),
    };
    if text.len() > SELECTOR_BYTES_MAX {
        return Err(fail("longer than selector_bytes_max"));
    }
    let rest = text
        .strip_prefix('.')
        .ok_or_else(|| fail("it starts with ."))?;
    let mut parser = SelectorParser {
        rest,
        segments: Vec::new(),
        every: false,
    };
    parser.parse().map_err(|reason| fail(&reason))?;
    if parser.every && !quantifier {
        return Err(fail("[] may end the selector of all or any only"));
    }
    Ok(Selector {
        segments: parser.segments,
        every: parser.every,
    })
}

struct SelectorParser<'a> {
    rest: &'a str,
    segments: Vec<Segment>,
    every: bool,
}

impl SelectorParser<'_> {
    fn parse(&mut self) -> Result<(), String> {
        let mut first = true;
        while !self.rest.is_empty() {
            if self.every {
                return Err("nothing may follow []".into());
            }
            if self.rest.starts_with('[') {
                self.bracket()?;
            } else {
                if !first {
                    self.rest = self.rest.strip_prefix('.').ok_or("expected . or [")?;
                    if self.rest.starts_with('[') {
                        self.bracket()?;
                        first = false;
                        continue;
                    }
                }
                self.field()?;
            }
            first = false;
        }
        Ok(())
    }

    fn push(&mut self, step: Step) {
        let optional = self.rest.starts_with('?');
        if optional {
            self.rest = &self.rest[1..];
        }
        self.segments.push(Segment { step, optional });
    }

    fn field(&mut self) -> Result<(), String> {
        let end = self
            .rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(self.rest.len());
        let name = &self.rest[..end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err("a field name is letters, digits and _".into());
        }
        self.rest = &self.rest[end..];
        self.push(Step::Field(name.to_owned()));
        Ok(())
    }

    fn bracket(&mut self) -> Result<(), String> {
        let inner_end = if self.rest[1..].starts_with('"') {
            quoted_end(&self.rest[1..])
                .map(|end| end + 1)
                .ok_or("an unclosed string")?
        } else {
            self.rest.find(']').ok_or("an unclosed [")?
        };
        let inner = &self.rest[1..inner_end];
        if self.rest.as_bytes().get(inner_end) != Some(&b']') {
            return Err("expected ]".into());
        }
        self.rest = &self.rest[inner_end + 1..];
        if inner.is_empty() {
            if self.rest.starts_with('?') {
                self.rest = &self.rest[1..];
            }
            self.every = true;
            return Ok(());
        }
        let step = bracket_step(inner)?;
        self.push(step);
        Ok(())
    }
}

/// Where a JSON string starting at `text[0] == '"'` ends (just past its
/// closing quote).
fn quoted_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn bracket_step(inner: &str) -> Result<Step, String> {
    if inner.starts_with('"') {
        let key = serde_json_string(inner).ok_or("a key in brackets is a JSON string")?;
        return Ok(Step::Field(key));
    }
    let int = |s: &str| -> Result<Option<i64>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an index"))
    };
    match inner.split_once(':') {
        Some((from, to)) => Ok(Step::Slice(int(from)?, int(to)?)),
        None => Ok(Step::Index(int(inner)?.ok_or("an empty index")?)),
    }
}

/// A JSON string's value (the escapes \" \\ \/ \n \t \r and \uXXXX).
fn serde_json_string(text: &str) -> Option<String> {
    let body = text.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'u' => {
                let code: String = chars.by_ref().take(4).collect();
                char::from_u32(u32::from_str_radix(&code, 16).ok()?)?
            }
            other => other,
        });
    }
    Some(out)
}

/// The value a selection found: a value, or none (a missing value not
/// made optional).
type Found = Option<Ipld>;

impl Selector {
    fn select(&self, root: &Ipld) -> Found {
        let mut current = root.clone();
        for segment in &self.segments {
            match step(&current, &segment.step) {
                Some(next) => current = next,
                None if segment.optional => return Some(Ipld::Null),
                None => return None,
            }
        }
        Some(current)
    }

    /// The items a quantifier ranges over: a list's items, a map's values.
    fn collection(&self, root: &Ipld) -> Option<Vec<Ipld>> {
        match self.select(root)? {
            Ipld::List(items) => Some(items),
            Ipld::Map(map) => Some(map.into_values().collect()),
            _ => None,
        }
    }
}

fn step(value: &Ipld, step: &Step) -> Found {
    match (value, step) {
        (Ipld::Map(map), Step::Field(name)) => map.get(name).cloned(),
        (Ipld::List(items), Step::Index(i)) => index(items.len(), *i).map(|i| items[i].clone()),
        (Ipld::List(items), Step::Slice(from, to)) => {
            let (from, to) = slice(items.len(), *from, *to);
            Some(Ipld::List(items[from..to].to_vec()))
        }
        (Ipld::Bytes(bytes), Step::Index(i)) => {
            index(bytes.len(), *i).map(|i| Ipld::Integer(bytes[i].into()))
        }
        (Ipld::Bytes(bytes), Step::Slice(from, to)) => {
            let (from, to) = slice(bytes.len(), *from, *to);
            Some(Ipld::Bytes(bytes[from..to].to_vec()))
        }
        (Ipld::String(text), Step::Slice(from, to)) => {
            let chars: Vec<char> = text.chars().collect();
            let (from, to) = slice(chars.len(), *from, *to);
            Some(Ipld::String(chars[from..to].iter().collect()))
        }
        _ => None,
    }
}

fn index(length: usize, i: i64) -> Option<usize> {
    let length = i64::try_from(length).ok()?;
    let i = if i < 0 { length + i } else { i };
    (0..length)
        .contains(&i)
        .then(|| usize::try_from(i).ok())
        .flatten()
}

fn slice(length: usize, from: Option<i64>, to: Option<i64>) -> (usize, usize) {
    let clamp = |bound: Option<i64>, default: usize| match bound {
        None => default,
        Some(b) if b < 0 => {
            length.saturating_sub(usize::try_from(b.unsigned_abs()).unwrap_or(usize::MAX))
        }
        Some(b) => usize::try_from(b).unwrap_or(usize::MAX).min(length),
    };
    let (from, to) = (clamp(from, 0), clamp(to, length));
    (from.min(to), to)
}

/// Deep equality, numbers by value.
fn equal(a: &Ipld, b: &Ipld) -> bool {
    match (a, b) {
        (Ipld::List(x), Ipld::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| equal(x, y))
        }
        (Ipld::Map(x), Ipld::Map(y)) => maps_equal(x, y),
        (Ipld::Integer(_) | Ipld::Float(_), Ipld::Integer(_) | Ipld::Float(_)) => {
            as_number(a) == as_number(b)
        }
        _ => a == b,
    }
}

fn maps_equal(x: &BTreeMap<String, Ipld>, y: &BTreeMap<String, Ipld>) -> bool {
    x.len() == y.len()
        && x.iter()
            .zip(y)
            .all(|((kx, vx), (ky, vy))| kx == ky && equal(vx, vy))
}

impl Statement {
    fn holds(&self, root: &Ipld) -> bool {
        match self {
            Statement::Equal(s, v) => s.select(root).is_some_and(|found| equal(&found, v)),
            Statement::NotEqual(s, v) => s.select(root).is_some_and(|found| !equal(&found, v)),
            Statement::Compare(order, s, limit) => s
                .select(root)
                .as_ref()
                .and_then(as_number)
                .is_some_and(|n| match order {
                    Order::Less => n < *limit,
                    Order::LessOrEqual => n <= *limit,
                    Order::Greater => n > *limit,
                    Order::GreaterOrEqual => n >= *limit,
                }),
            Statement::Like(s, pattern) => {
                matches!(s.select(root), Some(Ipld::String(text)) if like(pattern, &text))
            }
            Statement::Not(inner) => !inner.holds(root),
            Statement::And(items) => items.iter().all(|s| s.holds(root)),
            Statement::Or(items) => items.is_empty() || items.iter().any(|s| s.holds(root)),
            Statement::All(s, inner) => s
                .collection(root)
                .is_some_and(|items| items.iter().all(|item| inner.holds(item))),
            Statement::Any(s, inner) => s
                .collection(root)
                .is_some_and(|items| items.iter().any(|item| inner.holds(item))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(statements: Vec<Ipld>) -> Policy {
        Policy::parse(&Ipld::List(statements)).unwrap()
    }

    fn s(text: &str) -> Ipld {
        Ipld::String(text.into())
    }

    #[test]
    fn selectors_reach_into_lists_and_maps() {
        let args = Ipld::Map(BTreeMap::from([
            (
                "a".to_owned(),
                Ipld::List(vec![Ipld::Integer(1), Ipld::Integer(2), Ipld::Integer(3)]),
            ),
            ("odd key".to_owned(), Ipld::Bool(true)),
        ]));
        let holds = |sel: &str, value: Ipld| {
            policy(vec![Ipld::List(vec![s("=="), s(sel), value])]).matches(&args)
        };
        assert!(holds(".a[0]", Ipld::Integer(1)));
        assert!(holds(".a[-1]", Ipld::Integer(3)));
        assert!(holds(
            ".a[1:]",
            Ipld::List(vec![Ipld::Integer(2), Ipld::Integer(3)])
        ));
        assert!(holds(".[\"odd key\"]", Ipld::Bool(true)));
        assert!(holds(".missing?", Ipld::Null));
        assert!(!holds(".missing", Ipld::Null));
        assert!(!holds(".a[7]", Ipld::Null));
    }

    #[test]
    fn like_is_a_whole_string_glob_in_linear_steps() {
        let pattern = glob("a\\*b*c").unwrap();
        assert!(like(&pattern, "a*bc"));
        assert!(like(&pattern, "a*bxxc"));
        assert!(!like(&pattern, "abc"));
        assert!(!like(&pattern, "a*bcx"));
        let stars = glob(&"*a".repeat(200)).unwrap();
        assert!(!like(&stars, &"a".repeat(199)));
    }

    #[test]
    fn malformed_and_oversized_policies_are_refused_by_name() {
        let parse = |value: Ipld| Policy::parse(&value);
        assert_eq!(parse(s("x")), Err(PolicyError::NotList));
        assert!(matches!(
            parse(Ipld::List(vec![Ipld::List(vec![
                s("=="),
                s("a"),
                Ipld::Null
            ])])),
            Err(PolicyError::Selector { .. })
        ));
        assert!(matches!(
            parse(Ipld::List(vec![Ipld::List(vec![
                s("=="),
                s(".a[]"),
                Ipld::Null
            ])])),
            Err(PolicyError::Selector { .. })
        ));
        let mut deep = Ipld::List(vec![s("=="), s("."), Ipld::Null]);
        for _ in 0..POLICY_DEPTH_MAX {
            deep = Ipld::List(vec![s("not"), deep]);
        }
        assert_eq!(parse(Ipld::List(vec![deep])), Err(PolicyError::TooDeep));
        let wide = Ipld::List(vec![
            Ipld::List(vec![s("=="), s("."), Ipld::Null]);
            POLICY_STATEMENTS_MAX + 1
        ]);
        assert_eq!(parse(wide), Err(PolicyError::TooManyStatements));
    }
}
