//! A YAML tree that remembers line numbers, for errors that name the line
//! (yaml-rust2's own `Yaml` type has none). Built from the parser's events, with
//! limits so hostile input (deep nesting, alias bombs) cannot exhaust the stack
//! or memory: package-installs.yaml and DIB_BLOCK_DEVICE_CONFIG are a few dozen
//! nodes.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 20_000;

#[derive(Debug, Clone)]
pub enum Value {
    /// A plain `~`, `null` or nothing.
    Null,
    /// Scalars keep their text: callers judge `True`, `yes`, `3.11` by key.
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    /// 1-based line where the node starts; 0 when unknown.
    pub line: usize,
}

impl Node {
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar(_) => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn count(&self) -> usize {
        1 + match &self.value {
            Value::Null | Value::Scalar(_) => 0,
            Value::Seq(items) => items.iter().map(Node::count).sum(),
            Value::Map(pairs) => pairs.iter().map(|(k, v)| k.count() + v.count()).sum(),
        }
    }
}

/// Why the text is not a tree: at `line` (and `column` for syntax errors).
#[derive(Debug)]
pub struct Error {
    pub line: usize,
    pub column: Option<usize>,
    pub message: String,
}

/// Every document of `text`, in order.
pub fn load(text: &str) -> Result<Vec<Node>, Error> {
    let mut builder = TreeBuilder::default();
    if let Err(e) = Parser::new_from_str(text).load(&mut builder, true) {
        let m = e.marker();
        return Err(Error {
            line: m.line(),
            column: Some(m.col() + 1),
            message: e.info().to_string(),
        });
    }
    match builder.error {
        Some((line, message)) => Err(Error {
            line,
            column: None,
            message,
        }),
        None => Ok(builder.docs),
    }
}

enum Frame {
    Seq(Vec<Node>, usize, usize),
    Map(Vec<(Node, Node)>, Option<Node>, usize, usize),
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    error: Option<(usize, String)>,
}

impl TreeBuilder {
    fn fail(&mut self, line: usize, msg: &str) {
        if self.error.is_none() {
            self.error = Some((line, msg.to_string()));
        }
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(pairs, key, ..)) => match key.take() {
                None => *key = Some(node),
                Some(k) => pairs.push((k, node)),
            },
        }
    }

    fn count_node(&mut self, line: usize, n: usize) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(
                line,
                "the YAML is implausibly large (aliases expanding too far?)",
            );
            return false;
        }
        true
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                if !self.count_node(line, 1) {
                    return;
                }
                let null = style == TScalarStyle::Plain
                    && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL");
                let value = if null {
                    Value::Null
                } else {
                    Value::Scalar(text)
                };
                self.finish(Node { value, line }, anchor);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(line, "the YAML is nested too deeply");
                    return;
                }
                if !self.count_node(line, 1) {
                    return;
                }
                if matches!(ev, Event::SequenceStart(..)) {
                    self.stack.push(Frame::Seq(Vec::new(), line, anchor));
                } else {
                    self.stack.push(Frame::Map(Vec::new(), None, line, anchor));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, line, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(items, line, anchor)) => (Value::Seq(items), line, anchor),
                    Some(Frame::Map(pairs, _, line, anchor)) => (Value::Map(pairs), line, anchor),
                    None => return,
                };
                self.finish(Node { value, line }, anchor);
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    self.fail(line, "alias to an unknown anchor");
                    return;
                };
                let (n, value) = (target.count(), target.value.clone());
                if !self.count_node(line, n) {
                    return;
                }
                self.finish(Node { value, line }, 0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_nulls_and_aliases() {
        let docs = load("a: ~\nb:\n  - &x one\n  - *x\nc: 'null'\n").unwrap();
        let Value::Map(pairs) = &docs[0].value else {
            panic!()
        };
        assert!(pairs[0].1.is_null());
        let Value::Seq(items) = &pairs[1].1.value else {
            panic!()
        };
        assert_eq!((items[1].text(), items[1].line), (Some("one"), 4));
        assert_eq!(pairs[2].1.text(), Some("null"));
    }

    #[test]
    fn hostile_input_is_refused_with_its_line() {
        let deep = format!("{}x{}", "[".repeat(40), "]".repeat(40));
        assert!(load(&deep)
            .unwrap_err()
            .message
            .contains("nested too deeply"));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..6 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            bomb.push_str(&format!("l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(load(&bomb)
            .unwrap_err()
            .message
            .contains("implausibly large"));
        let e = load("a: [1,\n").unwrap_err();
        assert!(e.column.is_some() && e.line >= 1, "{e:?}");
    }
}
