//! The plain-data subset of pickle, read without executing or importing anything.
//!
//! A pickle is a program for a stack machine; Python's unpickler runs it, importing any
//! module it names. This one only understands the opcodes of plain data: `None`, booleans,
//! integers, floats, text, bytes (and Python 2's `str`), lists, tuples and dicts, with the
//! memo that shares one object between several places. Any other opcode (a global, a class
//! instance, a set) is refused, naming what it is.
//!
//! Why not `serde-pickle`: it copies a memo entry each time it is fetched, so a pickle of a
//! few hundred bytes that nests references to references decodes to an exponentially large
//! value, and it bounds neither size nor depth. Here the stack machine shares nodes, and the
//! value handed out is built under a budget of nodes and a depth limit: the work is linear
//! in what the budget allows, whatever the input.

use std::collections::HashMap;
use std::fmt;

/// A plain Python value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Python 3 `str`, Python 2 `unicode`.
    Text(String),
    /// Python 3 `bytes`.
    Bytes(Vec<u8>),
    /// Python 2 `str`: bytes, whatever they hold.
    Str2(Vec<u8>),
    /// A class, or an instance of it, by its dotted name (`_queue.Empty`): only in what
    /// [`decode_reply`] reads (a Python master's exceptions); never stored or sent.
    Object(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// In insertion order.
    Dict(Vec<(Value, Value)>),
}

/// What a pickle may cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Values in the result, counting each place a shared value appears.
    pub(crate) nodes: usize,
    /// Nesting of containers: keep it below the CBOR decoder's own limit (128 levels), so
    /// whatever is accepted can be read back as an item.
    pub(crate) depth: usize,
    /// Bytes of text and bytes in the result, counting each place a shared one appears.
    pub(crate) bytes: usize,
}

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It holds something other than plain data (the opcode's name, and the global's if any).
    NotPlain(String),
    /// It is larger or deeper than the limits allow.
    TooLarge(&'static str),
    /// It is not a well-formed pickle.
    Malformed(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NotPlain(what) => write!(
                f,
                "only plain data (None, bool, int, float, str, bytes, list, tuple, dict) can be \
                 queued; this holds {what}"
            ),
            Refused::TooLarge(what) => write!(f, "the value is too large: {what}"),
            Refused::Malformed(why) => write!(f, "not a valid pickle: {why}"),
        }
    }
}

/// A node of the machine's heap: containers hold node ids, so the memo shares them.
#[derive(Debug)]
enum Node {
    Leaf(Value),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
}

/// A stack entry.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Mark,
    Node(usize),
}

/// Reads one pickle (up to its `STOP`) into a plain value.
pub(crate) fn decode(bytes: &[u8], limits: Limits) -> Result<Value, Refused> {
    run(bytes, limits, false)
}

/// [`decode`] for a Python server's reply, which may hold an exception: a class reference
/// is its name and a call of it (an instance) the same [`Value::Object`]; nothing is
/// imported or called, and the arguments and state are dropped.
pub(crate) fn decode_reply(bytes: &[u8], limits: Limits) -> Result<Value, Refused> {
    run(bytes, limits, true)
}

fn run(bytes: &[u8], limits: Limits, objects: bool) -> Result<Value, Refused> {
    let mut m = Machine {
        input: bytes,
        at: 0,
        heap: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
        limits,
        objects,
    };
    let top = m.run()?;
    let (mut budget, mut bytes) = (limits.nodes, limits.bytes);
    m.build(top, 0, &mut budget, &mut bytes)
}

struct Machine<'a> {
    input: &'a [u8],
    at: usize,
    heap: Vec<Node>,
    stack: Vec<Slot>,
    /// Memo index to node id (`pickle.py` numbers from 0, cPickle from 1), at most the node
    /// budget's worth.
    memo: HashMap<u32, usize>,
    limits: Limits,
    /// Whether globals and calls become [`Value::Object`] (see [`decode_reply`]).
    objects: bool,
}

fn malformed(why: impl Into<String>) -> Refused {
    Refused::Malformed(why.into())
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Refused> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or_else(|| malformed("it ends inside an opcode's argument"))?;
        let bytes = &self.input[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, Refused> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<u32, Refused> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Refused> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// A length argument, checked against what is left of the input before anything is
    /// allocated for it.
    fn len(&mut self, width: usize) -> Result<usize, Refused> {
        let n = match width {
            1 => self.u8()? as u64,
            4 => self.u32()? as u64,
            _ => self.u64()?,
        };
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.input.len() - self.at)
            .ok_or_else(|| malformed("a length runs past the end"))
    }

    fn push(&mut self, node: Node) -> Result<(), Refused> {
        // Every node costs at least one input byte, so the heap is bounded by the input; the
        // node budget bounds it tighter.
        if self.heap.len() >= self.limits.nodes {
            return Err(Refused::TooLarge("too many values"));
        }
        self.heap.push(node);
        self.slot(Slot::Node(self.heap.len() - 1))
    }

    fn leaf(&mut self, value: Value) -> Result<(), Refused> {
        self.push(Node::Leaf(value))
    }

    fn pop(&mut self) -> Result<usize, Refused> {
        match self.stack.pop() {
            Some(Slot::Node(id)) => Ok(id),
            Some(Slot::Mark) => Err(malformed("a mark where a value was expected")),
            None => Err(malformed("the stack is empty")),
        }
    }

    fn top(&self) -> Result<usize, Refused> {
        match self.stack.last() {
            Some(Slot::Node(id)) => Ok(*id),
            _ => Err(malformed("no value on the stack")),
        }
    }

    /// The values above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<usize>, Refused> {
        let mark = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or_else(|| malformed("no mark"))?;
        let items = self
            .stack
            .drain(mark + 1..)
            .map(|s| match s {
                Slot::Node(id) => id,
                Slot::Mark => unreachable!("the topmost mark is at `mark`"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn text(&mut self, width: usize) -> Result<(), Refused> {
        let n = self.len(width)?;
        // Python writes a str with lone surrogates as invalid UTF-8: not text anywhere else.
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| Refused::NotPlain("a str that is not valid Unicode".into()))?
            .to_owned();
        self.leaf(Value::Text(s))
    }

    /// A text argument up to its newline, of at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<&[u8], Refused> {
        let rest = &self.input[self.at..];
        let end = rest
            .iter()
            .take(max + 1)
            .position(|&b| b == b'\n')
            .ok_or_else(|| malformed("an argument line without its end"))?;
        self.at += end + 1;
        Ok(&rest[..end])
    }

    fn bytes(&mut self, width: usize, py2: bool) -> Result<(), Refused> {
        let n = self.len(width)?;
        let b = self.take(n)?.to_vec();
        self.leaf(if py2 { Value::Str2(b) } else { Value::Bytes(b) })
    }

    fn memoize(&mut self, index: u32) -> Result<(), Refused> {
        let id = self.top()?;
        // MEMOIZE is one byte: the node budget bounds the memo too.
        if self.memo.len() >= self.limits.nodes && !self.memo.contains_key(&index) {
            return Err(Refused::TooLarge("too many values"));
        }
        self.memo.insert(index, id);
        Ok(())
    }

    fn fetch(&mut self, index: u32) -> Result<(), Refused> {
        let id = *self
            .memo
            .get(&index)
            .ok_or_else(|| malformed("a memo fetch of nothing"))?;
        self.slot(Slot::Node(id))
    }

    /// Pushes onto the stack, which the node budget bounds too (marks and fetches make no
    /// node).
    fn slot(&mut self, slot: Slot) -> Result<(), Refused> {
        if self.stack.len() >= self.limits.nodes {
            return Err(Refused::TooLarge("too many values"));
        }
        self.stack.push(slot);
        Ok(())
    }

    fn append(&mut self, items: Vec<usize>) -> Result<(), Refused> {
        let list = self.top()?;
        match &mut self.heap[list] {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(malformed("an append to something not a list")),
        }
    }

    fn set_items(&mut self, items: Vec<usize>) -> Result<(), Refused> {
        if !items.len().is_multiple_of(2) {
            return Err(malformed("a dict item without its value"));
        }
        let dict = self.top()?;
        match &mut self.heap[dict] {
            Node::Dict(d) => {
                d.extend(items.chunks(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            _ => Err(malformed("a dict item set on something not a dict")),
        }
    }

    /// Runs the program to its `STOP`; returns the node it leaves.
    fn run(&mut self) -> Result<usize, Refused> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(malformed(format!("pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.slot(Slot::Mark)?,
                b'0' => {
                    self.stack
                        .pop()
                        .ok_or_else(|| malformed("pop of nothing"))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'N' => self.leaf(Value::None)?,
                0x88 => self.leaf(Value::Bool(true))?,
                0x89 => self.leaf(Value::Bool(false))?,
                b'J' => {
                    let n = self.u32()? as i32;
                    self.leaf(Value::Int(n.into()))?
                }
                b'K' => {
                    let n = self.u8()?;
                    self.leaf(Value::Int(n.into()))?
                }
                b'M' => {
                    let n = self.u16()?;
                    self.leaf(Value::Int(n as i64))?
                }
                0x8a | 0x8b => {
                    let n = self.len(if op == 0x8a { 1 } else { 4 })?;
                    let digits = self.take(n)?;
                    let int = long(digits).ok_or(Refused::TooLarge(
                        "an integer beyond 64 bits (distq queues hold 64-bit integers)",
                    ))?;
                    self.leaf(Value::Int(int))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let f = f64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                    self.leaf(Value::Float(f))?
                }
                0x8c => self.text(1)?,
                b'X' => self.text(4)?,
                0x8d => self.text(8)?,
                b'C' => self.bytes(1, false)?,
                b'B' => self.bytes(4, false)?,
                0x8e => self.bytes(8, false)?,
                b'U' => self.bytes(1, true)?,
                b'T' => self.bytes(4, true)?,
                b')' => self.push(Node::Tuple(Vec::new()))?,
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items))?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))?
                }
                b']' => self.push(Node::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items))?
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Dict(Vec::new()))?;
                    self.set_items(items)?
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                0x94 => {
                    // As CPython does: the next index is the memo's size.
                    let index = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memoize(index)?
                }
                b'q' => {
                    let index = self.u8()?.into();
                    self.memoize(index)?
                }
                b'r' => {
                    let index = self.u32()?;
                    self.memoize(index)?
                }
                b'h' => {
                    let index = self.u8()?.into();
                    self.fetch(index)?
                }
                b'j' => {
                    let index = self.u32()?;
                    self.fetch(index)?
                }
                b'I' => {
                    // Python 2 writes an int beyond 32 bits as a decimal line, even in
                    // protocol 2 (and `I00`/`I01` are its booleans).
                    let line = self.line(24)?;
                    let value = match line {
                        b"00" => Value::Bool(false),
                        b"01" => Value::Bool(true),
                        digits => std::str::from_utf8(digits)
                            .ok()
                            .and_then(|d| d.parse::<i64>().ok())
                            .map(Value::Int)
                            .ok_or(Refused::TooLarge(
                                "an integer beyond 64 bits (distq queues hold 64-bit integers)",
                            ))?,
                    };
                    self.leaf(value)?
                }
                b'c' if self.objects => {
                    let module = String::from_utf8_lossy(self.line(256)?).into_owned();
                    let name = String::from_utf8_lossy(self.line(256)?).into_owned();
                    self.leaf(Value::Object(format!("{module}.{name}")))?
                }
                0x93 if self.objects => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let name = format!("{}.{}", self.shown(module), self.shown(name));
                    self.leaf(Value::Object(name))?
                }
                // A call (REDUCE), or a new instance (NEWOBJ, NEWOBJ_EX), of a class named
                // by a global: the instance is its class's name.
                b'R' | 0x81 | 0x92 if self.objects => {
                    if op == 0x92 {
                        self.pop()?;
                    }
                    self.pop()?;
                    let class = self.pop()?;
                    match &self.heap[class] {
                        Node::Leaf(Value::Object(name)) => {
                            let name = name.clone();
                            self.leaf(Value::Object(name))?
                        }
                        _ => return Err(malformed("a call of something not a global")),
                    }
                }
                // BUILD: an instance's state, dropped.
                b'b' if self.objects => {
                    self.pop()?;
                    self.top()?;
                }
                b'c' => {
                    // GLOBAL: "module\nname\n", named in the refusal (never imported), and
                    // no more of it than a person needs to read.
                    let rest = &self.input[self.at..];
                    let what = rest
                        .splitn(3, |&b| b == b'\n')
                        .take(2)
                        .map(|p| {
                            let part = String::from_utf8_lossy(&p[..p.len().min(60)]);
                            part.escape_debug().to_string()
                        })
                        .collect::<Vec<_>>()
                        .join(".");
                    return Err(Refused::NotPlain(format!("the global {what}")));
                }
                0x93 => {
                    // STACK_GLOBAL: the module and the name are the two strings pushed last.
                    let name = self.pop().map(|id| self.shown(id));
                    let module = self.pop().map(|id| self.shown(id));
                    let what = match (module, name) {
                        (Ok(m), Ok(n)) => format!("the global {m}.{n}"),
                        _ => "a global".to_owned(),
                    };
                    return Err(Refused::NotPlain(what));
                }
                other => return Err(Refused::NotPlain(not_plain(other))),
            }
        }
    }

    /// A string node as a person reads it in a refusal (at most 60 bytes of it).
    fn shown(&self, id: usize) -> String {
        match &self.heap[id] {
            Node::Leaf(Value::Text(t)) => t
                .chars()
                .take(60)
                .collect::<String>()
                .escape_debug()
                .to_string(),
            _ => "?".to_owned(),
        }
    }

    /// Takes `n` bytes of text or bytes out of the byte budget.
    fn charge(&self, n: usize, bytes: &mut usize) -> Result<(), Refused> {
        *bytes = bytes
            .checked_sub(n)
            .ok_or(Refused::TooLarge("too many bytes"))?;
        Ok(())
    }

    /// The value of node `id`, each shared node built again where it appears, within the
    /// node budget and the depth limit (a recursive structure meets the depth limit).
    fn build(
        &self,
        id: usize,
        depth: usize,
        budget: &mut usize,
        bytes: &mut usize,
    ) -> Result<Value, Refused> {
        if depth > self.limits.depth {
            return Err(Refused::TooLarge("nested too deep (or recursive)"));
        }
        *budget = budget
            .checked_sub(1)
            .ok_or(Refused::TooLarge("too many values"))?;
        if let Node::Leaf(Value::Text(t)) = &self.heap[id] {
            self.charge(t.len(), bytes)?;
        }
        if let Node::Leaf(Value::Bytes(b) | Value::Str2(b)) = &self.heap[id] {
            self.charge(b.len(), bytes)?;
        }
        let all = |ids: &[usize], budget: &mut usize, bytes: &mut usize| {
            ids.iter()
                .map(|&i| self.build(i, depth + 1, budget, bytes))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match &self.heap[id] {
            Node::Leaf(v) => v.clone(),
            Node::List(ids) => Value::List(all(ids, budget, bytes)?),
            Node::Tuple(ids) => Value::Tuple(all(ids, budget, bytes)?),
            Node::Dict(pairs) => {
                let mut out: Vec<(Value, Value)> = Vec::with_capacity(pairs.len());
                // A key set again keeps its place and takes the new value, as in Python.
                let mut seen = HashMap::new();
                for &(k, v) in pairs {
                    let k = self.build(k, depth + 1, budget, bytes)?;
                    let v = self.build(v, depth + 1, budget, bytes)?;
                    let mut key = Vec::new();
                    // A key that does not encode (an object, in a reply) is never merged.
                    if crate::codec::encode_into(&k, &mut key).is_err() {
                        out.push((k, v));
                        continue;
                    }
                    match seen.get(&key) {
                        Some(&at) => out[at] = (k, v),
                        None => {
                            seen.insert(key, out.len());
                            out.push((k, v));
                        }
                    }
                }
                Value::Dict(out)
            }
        })
    }
}

/// A little-endian two's-complement integer of pickle's `LONG1`/`LONG4`, if it fits i64.
fn long(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() {
        return Some(0);
    }
    let negative = digits[digits.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xFF } else { 0 };
    // Beyond 8 bytes only sign extension may follow.
    if digits.len() > 8 && digits[8..].iter().any(|&b| b != fill) {
        return None;
    }
    let mut word = [fill; 8];
    let n = digits.len().min(8);
    word[..n].copy_from_slice(&digits[..n]);
    let value = i64::from_le_bytes(word);
    // The sign of the 8 bytes kept must be the sign of the whole.
    ((value < 0) == negative).then_some(value)
}

/// The name of an opcode outside plain data, for the refusal.
fn not_plain(op: u8) -> String {
    let name = match op {
        b'R' => "a call (REDUCE)",
        0x81 => "a class instance (NEWOBJ)",
        0x92 => "a class instance (NEWOBJ_EX)",
        b'b' => "an object's state (BUILD)",
        b'i' | b'o' => "a class instance (INST/OBJ)",
        0x82..=0x84 => "an extension-registry object (EXT)",
        0x8f..=0x91 => "a set or frozenset",
        0x96 => "a bytearray",
        b'P' | b'Q' => "a persistent id",
        0x97 | 0x98 => "an out-of-band buffer",
        _ => return format!("the pickle opcode 0x{op:02x}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::python::hex;

    const LIMITS: Limits = Limits {
        nodes: 10_000,
        depth: 64,
        bytes: 1 << 20,
    };

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    /// Requests captured from CPython 3.11 (../shared/research/PYTHON_INTEROP.md §2.2).
    #[test]
    fn captured_requests_decode_to_their_tuples() {
        let dummy = hex("8004951000000000000000284e8c0564756d6d7994297d9474942e");
        assert_eq!(
            decode(&dummy, LIMITS).unwrap(),
            Value::Tuple(vec![
                Value::None,
                text("dummy"),
                Value::Tuple(vec![]),
                Value::Dict(vec![])
            ])
        );
        let get = hex(concat!(
            "8004952900000000000000288c0c376666383835636335653530948c0367657494",
            "297d948c0774696d656f7574944b017374942e"
        ));
        assert_eq!(
            decode(&get, LIMITS).unwrap(),
            Value::Tuple(vec![
                text("7ff885cc5e50"),
                text("get"),
                Value::Tuple(vec![]),
                Value::Dict(vec![(text("timeout"), Value::Int(1))])
            ])
        );
        let put = hex(concat!(
            "8004952a00000000000000288c0c376666383835636337373530948c0370757494",
            "8c0a37202a2037203d2034399485947d9474942e"
        ));
        assert_eq!(
            decode(&put, LIMITS).unwrap(),
            Value::Tuple(vec![
                text("7ff885cc7750"),
                text("put"),
                Value::Tuple(vec![text("7 * 7 = 49")]),
                Value::Dict(vec![])
            ])
        );
    }

    /// A memo fetch shares the object as it is when fetched, appends included.
    #[test]
    fn a_shared_list_is_the_filled_list_wherever_it_appears() {
        // x = [1, 2]; pickle.dumps((x, x), 2)
        let p = b"\x80\x02]q\x00(K\x01K\x02eh\x00\x86q\x01.";
        let x = Value::List(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(decode(p, LIMITS).unwrap(), Value::Tuple(vec![x.clone(), x]));
    }

    #[test]
    fn integers_floats_bytes_and_python2_strings() {
        // pickle.dumps([-1, 65535, 2**40, -2**63, 1.5, b'\xff', u'\xe9'], 4), from Python 3.11
        let p = b"\x80\x04\x951\x00\x00\x00\x00\x00\x00\x00]\x94(J\xff\xff\xff\xffM\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80G?\xf8\x00\x00\x00\x00\x00\x00C\x01\xff\x94\x8c\x02\xc3\xa9\x94e.";
        assert_eq!(
            decode(p, LIMITS).unwrap(),
            Value::List(vec![
                Value::Int(-1),
                Value::Int(65535),
                Value::Int(1 << 40),
                Value::Int(i64::MIN),
                Value::Float(1.5),
                Value::Bytes(vec![0xFF]),
                text("é"),
            ])
        );
        // Python 2.7: pickle.dumps(('ab', u'c'), 2)
        let p = b"\x80\x02U\x02abq\x00X\x01\x00\x00\x00cq\x01\x86q\x02.";
        assert_eq!(
            decode(p, LIMITS).unwrap(),
            Value::Tuple(vec![Value::Str2(b"ab".to_vec()), text("c")])
        );
        // 2**64 (Python 3.11, protocol 2) does not fit.
        let p = b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.";
        assert!(matches!(decode(p, LIMITS), Err(Refused::TooLarge(_))));
    }

    #[test]
    fn anything_that_would_import_or_call_is_refused_naming_it() {
        // Python 2.7's pickle.dumps(os.system, 2), and `('#ERROR', Empty())` from 3.11.
        let global = b"\x80\x02cposix\nsystem\nq\x00.";
        assert_eq!(
            decode(global, LIMITS),
            Err(Refused::NotPlain("the global posix.system".into()))
        );
        let stack = hex("80049522000000000000008c06234552524f52948c065f7175657565948c05456d70747994939429529486942e");
        assert!(matches!(decode(&stack, LIMITS), Err(Refused::NotPlain(_))));
        let set = b"\x80\x04\x8f\x94(K\x01\x90.";
        assert_eq!(
            decode(set, LIMITS),
            Err(Refused::NotPlain("a set or frozenset".into()))
        );
    }

    /// References to references: a few bytes that would expand to 2^40 values.
    #[test]
    fn a_reference_bomb_is_refused_within_its_budget() {
        let mut p = b"\x80\x02]q\x00".to_vec();
        for i in 0..40u8 {
            // (memo[i], memo[i]) memoized as i + 1
            p.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        }
        p.push(b'.');
        assert_eq!(
            decode(&p, LIMITS),
            Err(Refused::TooLarge("too many values"))
        );
    }

    #[test]
    fn depth_recursion_and_malformed_input_are_refused() {
        let deep: Vec<u8> = [
            b"\x80\x02".to_vec(),
            vec![b']'; 100],
            vec![b'a'; 99],
            b".".to_vec(),
        ]
        .concat();
        assert!(matches!(decode(&deep, LIMITS), Err(Refused::TooLarge(_))));
        // l = []; l.append(l): the list inside itself.
        let recursive = b"\x80\x02]q\x00h\x00a.";
        assert!(matches!(
            decode(recursive, LIMITS),
            Err(Refused::TooLarge(_))
        ));
        for bad in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\x7fab.",
            b"\x80\x02h\x05.",
            b"\x80\x02t.",
            b"\x80\x02K\x01s.",
        ] {
            assert!(
                matches!(decode(bad, LIMITS), Err(Refused::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    /// Python 2.7's multiprocessing pickles with cPickle: its memo starts at 1, and an int
    /// beyond 32 bits is a decimal line.
    #[test]
    fn python2_cpickle_requests_and_ints_decode() {
        let get = b"\x80\x02(U\x0c7ff885cc5e50q\x01U\x03getq\x02)}q\x03U\x07timeoutq\x04K\x01st.";
        let s2 = |s: &str| Value::Str2(s.as_bytes().to_vec());
        assert_eq!(
            decode(get, LIMITS).unwrap(),
            Value::Tuple(vec![
                s2("7ff885cc5e50"),
                s2("get"),
                Value::Tuple(vec![]),
                Value::Dict(vec![(s2("timeout"), Value::Int(1))])
            ])
        );
        assert_eq!(
            decode(b"\x80\x02I1099511627776\n.", LIMITS).unwrap(),
            Value::Int(1 << 40)
        );
        assert_eq!(decode(b"I01\n.", LIMITS).unwrap(), Value::Bool(true));
        assert!(matches!(
            decode(b"I99999999999999999999\n.", LIMITS),
            Err(Refused::TooLarge(_))
        ));
        assert!(matches!(decode(b"I12", LIMITS), Err(Refused::Malformed(_))));
    }

    /// Shared text costs its bytes wherever it appears; marks and fetches cost stack room.
    #[test]
    fn shared_text_marks_and_long_globals_stay_within_bounds() {
        let mut p = b"\x80\x04X\xe8\x03\x00\x00".to_vec();
        p.extend(std::iter::repeat_n(b'a', 1000));
        p.extend_from_slice(b"\x94](");
        for _ in 0..2000 {
            p.extend_from_slice(b"h\x00");
        }
        p.extend_from_slice(b"e.");
        assert_eq!(decode(&p, LIMITS), Err(Refused::TooLarge("too many bytes")));
        let marks = [b"\x80\x02".to_vec(), vec![b'('; 20_000], b"N.".to_vec()].concat();
        assert_eq!(
            decode(&marks, LIMITS),
            Err(Refused::TooLarge("too many values"))
        );
        let long = [b"c".to_vec(), vec![b'm'; 100_000], b"\nx\n.".to_vec()].concat();
        match decode(&long, LIMITS) {
            Err(Refused::NotPlain(what)) => assert!(what.len() < 200, "{}", what.len()),
            other => panic!("{other:?}"),
        }
        // '\ud800' as Python 3 writes it.
        assert!(matches!(
            decode(b"\x80\x04\x8c\x03\xed\xa0\x80\x94.", LIMITS),
            Err(Refused::NotPlain(_))
        ));
    }

    /// Every truncation and many byte changes of real pickles end in a value or a refusal,
    /// never a panic, in time linear in the input.
    #[test]
    fn damaged_pickles_never_panic() {
        let samples = [
            hex("8004951000000000000000284e8c0564756d6d7994297d9474942e"),
            b"\x80\x02]q\x00(K\x01K\x02eh\x00\x86q\x01.".to_vec(),
            b"\x80\x02U\x02abq\x00X\x01\x00\x00\x00cq\x01\x86q\x02.".to_vec(),
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for sample in &samples {
            for cut in 0..sample.len() {
                let _ = decode(&sample[..cut], LIMITS);
            }
            for _ in 0..20_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut bad = sample.clone();
                let at = (seed as usize) % bad.len();
                bad[at] = (seed >> 32) as u8;
                let _ = decode(&bad, LIMITS);
            }
        }
    }
}

/// Which Python reads a pickle we write: Python 2 has no bytes type and reads protocols up
/// to 2; Python 3 reads bytes from protocol 3 on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Python2,
    Python3,
}

/// Writes `value` as a pickle `dialect` reads (no memo, no frames: every Python from 2.7
/// on loads it).
pub(crate) fn encode(value: &Value, dialect: Dialect) -> Vec<u8> {
    let mut out = vec![0x80, header(dialect)];
    write(&mut out, value, dialect);
    out.push(b'.');
    out
}

/// `('#ERROR', module.name(*args))`: the client raises the exception, so `except
/// queue.Empty` (or `TypeError`, ...) catches it. Pickled as Python pickles an exception
/// (`GLOBAL`, the arguments, `REDUCE`), at protocol 2, which every Python reads.
pub(crate) fn error(module: &str, name: &str, args: &[Value], dialect: Dialect) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    write(&mut out, &Value::Text("#ERROR".into()), dialect);
    out.push(b'c');
    out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    write(&mut out, &Value::Tuple(args.to_vec()), dialect);
    out.extend_from_slice(b"R\x86.");
    out
}

/// The module a client's interpreter names the queue exception `name` (`Empty`, `Full`)
/// in: `Queue` in Python 2; `queue`, except `Empty` from Python 3.7 on, which is the C
/// class `_queue.Empty` (`queue.Empty is _queue.Empty`). Protocol 4 is 3.8's default; an
/// older Python 3 (protocol 3) may have no `_queue`, and `queue.Empty` is the same class.
pub(crate) fn queue_module(name: &str, dialect: Dialect, protocol: u8) -> &'static str {
    match (dialect, name, protocol) {
        (Dialect::Python2, _, _) => "Queue",
        (Dialect::Python3, "Empty", 4..) => "_queue",
        (Dialect::Python3, _, _) => "queue",
    }
}

/// The module Python's built-in exceptions live in.
pub(crate) fn builtins(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Python2 => "exceptions",
        Dialect::Python3 => "builtins",
    }
}

/// Which Python wrote a pickle, and at which protocol: Python 2 writes protocol 2 (its
/// highest), Python 3 protocol 3 (up to 3.7) or higher.
pub(crate) fn writer(bytes: &[u8]) -> (Dialect, u8) {
    match bytes {
        [0x80, p, ..] if *p <= 2 => (Dialect::Python2, *p),
        [0x80, p, ..] => (Dialect::Python3, *p),
        _ => (Dialect::Python2, 0),
    }
}

fn header(dialect: Dialect) -> u8 {
    match dialect {
        Dialect::Python2 => 2,
        Dialect::Python3 => 3,
    }
}

fn write(out: &mut Vec<u8>, value: &Value, dialect: Dialect) {
    match value {
        Value::None => out.push(b'N'),
        Value::Bool(true) => out.push(0x88),
        Value::Bool(false) => out.push(0x89),
        Value::Int(n) => write_int(out, *n, dialect),
        Value::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        // Python 2 gets ASCII as its `str`, as a Python 2 peer would have sent it.
        Value::Text(s) if dialect == Dialect::Python2 && s.is_ascii() => {
            out.push(b'T');
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        // Never produced but by `decode_reply`: written as the name it is.
        Value::Object(name) => write(out, &Value::Text(name.clone()), dialect),
        Value::Text(s) => {
            out.push(b'X');
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) | Value::Str2(b) => {
            // Python 2 reads both as its str; Python 3 as bytes.
            out.push(match dialect {
                Dialect::Python2 => b'T',
                Dialect::Python3 => b'B',
            });
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        Value::List(items) => {
            out.push(b']');
            if !items.is_empty() {
                out.push(b'(');
                items.iter().for_each(|v| write(out, v, dialect));
                out.push(b'e');
            }
        }
        Value::Tuple(items) => match items.len() {
            0 => out.push(b')'),
            n @ 1..=3 => {
                items.iter().for_each(|v| write(out, v, dialect));
                out.push(0x84 + n as u8);
            }
            _ => {
                out.push(b'(');
                items.iter().for_each(|v| write(out, v, dialect));
                out.push(b't');
            }
        },
        Value::Dict(pairs) => {
            out.push(b'}');
            if !pairs.is_empty() {
                out.push(b'(');
                for (k, v) in pairs {
                    write(out, k, dialect);
                    write(out, v, dialect);
                }
                out.push(b'u');
            }
        }
    }
}

fn write_int(out: &mut Vec<u8>, n: i64, dialect: Dialect) {
    match n {
        0..=0xFF => out.extend_from_slice(&[b'K', n as u8]),
        0x100..=0xFFFF => {
            out.push(b'M');
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        _ => match i32::try_from(n) {
            Ok(small) => {
                out.push(b'J');
                out.extend_from_slice(&small.to_le_bytes());
            }
            // Python 2 writes an int beyond 32 bits as a decimal line, read back as its
            // 64-bit `int` (LONG1 would make it a `long`).
            Err(_) if dialect == Dialect::Python2 => {
                out.extend_from_slice(format!("I{n}\n").as_bytes());
            }
            Err(_) => {
                // LONG1: the shortest little-endian two's complement.
                let bytes = n.to_le_bytes();
                let mut len = 8;
                while len > 1 {
                    let (last, prev) = (bytes[len - 1], bytes[len - 2]);
                    let redundant =
                        (last == 0 && prev & 0x80 == 0) || (last == 0xFF && prev & 0x80 != 0);
                    if !redundant {
                        break;
                    }
                    len -= 1;
                }
                out.extend_from_slice(&[0x8a, len as u8]);
                out.extend_from_slice(&bytes[..len]);
            }
        },
    }
}

#[cfg(test)]
mod written {
    use std::process::{Command, Stdio};

    use super::*;

    fn sample() -> Value {
        Value::Tuple(vec![
            Value::Text("#RETURN".into()),
            Value::List(vec![
                Value::None,
                Value::Bool(true),
                Value::Int(7),
                Value::Int(-1),
                Value::Int(70_000),
                Value::Int(1 << 40),
                Value::Int(i64::MIN),
                Value::Float(0.5),
                Value::Text("7 * 7 = 49".into()),
                Value::Bytes(vec![0, 255]),
                Value::Tuple(vec![]),
                Value::Tuple((0..5).map(Value::Int).collect()),
                Value::Dict(vec![(Value::Text("k".into()), Value::List(vec![]))]),
            ]),
        ])
    }

    /// `v` with each Python 2 str as the text (if ASCII) or bytes it was written from.
    fn unstr2(v: Value) -> Value {
        match v {
            Value::Str2(b) if b.is_ascii() => Value::Text(String::from_utf8(b).unwrap()),
            Value::Str2(b) => Value::Bytes(b),
            Value::List(l) => Value::List(l.into_iter().map(unstr2).collect()),
            Value::Tuple(l) => Value::Tuple(l.into_iter().map(unstr2).collect()),
            Value::Dict(d) => {
                Value::Dict(d.into_iter().map(|(k, v)| (unstr2(k), unstr2(v))).collect())
            }
            other => other,
        }
    }

    #[test]
    fn a_key_set_twice_keeps_its_place_and_takes_the_last_value() {
        // {1: 2, 3: 4, 1: 5} as SETITEMS: Python makes it {1: 5, 3: 4}.
        let pickle = b"\x80\x02}(K\x01K\x02K\x03K\x04K\x01K\x05u.";
        assert_eq!(
            decode(
                pickle,
                Limits {
                    nodes: 100,
                    depth: 4,
                    bytes: 100
                }
            )
            .unwrap(),
            Value::Dict(vec![
                (Value::Int(1), Value::Int(5)),
                (Value::Int(3), Value::Int(4))
            ])
        );
    }

    #[test]
    fn what_we_write_reads_back_the_same() {
        for dialect in [Dialect::Python2, Dialect::Python3] {
            let bytes = encode(&sample(), dialect);
            let mut back = decode(
                &bytes,
                Limits {
                    nodes: 1000,
                    depth: 10,
                    bytes: 1000,
                },
            )
            .unwrap();
            if dialect == Dialect::Python2 {
                // Python 2 has no bytes, and gets ASCII text as its str: both come back as
                // its str.
                back = unstr2(back);
            }
            assert_eq!(back, sample(), "{dialect:?}");
        }
        for n in [
            i64::MIN,
            -(1 << 40),
            -129,
            -1,
            0,
            255,
            256,
            65_536,
            1 << 31,
            i64::MAX,
        ] {
            let bytes = encode(&Value::Int(n), Dialect::Python3);
            assert_eq!(
                decode(
                    &bytes,
                    Limits {
                        nodes: 1,
                        depth: 1,
                        bytes: 0
                    }
                )
                .unwrap(),
                Value::Int(n)
            );
        }
    }

    /// Real interpreters load what we write, and raise the queue exceptions as their own
    /// server would have them raised.
    #[test]
    fn pythons_load_our_pickles_and_raise_our_queue_errors() {
        let pythons: Vec<_> = crate::python::pythons()
            .into_iter()
            .map(|(v, path)| {
                let d = match v.starts_with('2') {
                    true => Dialect::Python2,
                    false => Dialect::Python3,
                };
                (v, path, d)
            })
            .collect();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        for (version, python, dialect) in &pythons {
            let value = hex(&encode(&sample(), *dialect));
            let empty = queue_module("Empty", *dialect, 4);
            let empty = hex(&error(empty, "Empty", &[], *dialect));
            let full = queue_module("Full", *dialect, 4);
            let full = hex(&error(full, "Full", &[], *dialect));
            let args = [Value::Text("no".into())];
            let typeerror = hex(&error(builtins(*dialect), "TypeError", &args, *dialect));
            let script = format!(
                "import pickle, binascii\n\
                 try:\n    import queue\nexcept ImportError:\n    import Queue as queue\n\
                 v = pickle.loads(binascii.unhexlify('{value}'))\n\
                 assert v[0] == u'#RETURN' and v[1][8] == u'7 * 7 = 49' and v[1][5] == 2 ** 40, v\n\
                 assert v[1][6] == -2 ** 63 and v[1][9] == b'\\x00\\xff' and v[1][12] == {{u'k': []}}, v\n\
                 for h, cls in (('{empty}', queue.Empty), ('{full}', queue.Full)):\n    \
                     kind, e = pickle.loads(binascii.unhexlify(h))\n    \
                     assert kind == '#ERROR' and type(e) is cls, (kind, e)\n\
                 kind, e = pickle.loads(binascii.unhexlify('{typeerror}'))\n\
                 assert type(e) is TypeError and e.args == ('no',), e\n\
                 print('ok')\n"
            );
            let out = Command::new(python)
                .args(["-c", &script])
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "ok",
                "{version}"
            );
        }
        println!(
            "Pythons that loaded our pickles: {:?}",
            pythons.iter().map(|p| &p.0).collect::<Vec<_>>()
        );
    }
}
