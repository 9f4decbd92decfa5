//! DNS messages (RFC 1035, SRV from RFC 2782) as far as service discovery
//! needs them: a question, and answers of types A, AAAA and SRV. The
//! supervisor's DNS server answers with them; the DNS SRV backend asks
//! with them. Names are compared without regard to ASCII case.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Record types.
pub const A: u16 = 1;
pub const AAAA: u16 = 28;
pub const SRV: u16 = 33;
const CLASS_IN: u16 = 1;

/// Response codes.
pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;
pub const REFUSED: u8 = 5;

/// Why bytes are no DNS message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a DNS message: {0}")]
pub struct Malformed(&'static str);

/// A question: a name (lowercase, without its final dot) and a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub name: String,
    pub kind: u16,
    /// Whether the asker wants recursion (echoed in the answer).
    pub recursion_desired: bool,
    /// The name as it was asked, in wire form: an answer echoes it byte
    /// for byte (a resolver that randomizes a name's case checks the echo,
    /// and a label need not be UTF-8).
    asked: Vec<u8>,
}

/// A record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    /// A type this module does not read.
    Other(u16),
}

/// A resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: Data,
}

/// A response: its code and its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub code: u8,
    pub answers: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Question {
    /// The query for `name` of type `kind`, with recursion desired.
    pub fn new(id: u16, name: &str, kind: u16) -> Question {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut asked = Vec::with_capacity(name.len() + 2);
        write_name(&mut asked, &name);
        Question {
            id,
            name,
            kind,
            recursion_desired: true,
            asked,
        }
    }

    /// The question of a query message.
    pub fn parse(message: &[u8]) -> Result<Question, Malformed> {
        let mut reader = Reader { message, at: 12 };
        if message.len() < 12 {
            return Err(Malformed("shorter than a header"));
        }
        if message[2] & 0x80 != 0 {
            return Err(Malformed("a response, not a query"));
        }
        if u16::from_be_bytes([message[4], message[5]]) != 1 {
            return Err(Malformed("not exactly one question"));
        }
        let (name, asked) = reader.name_as_sent()?;
        let kind = reader.u16()?;
        let _class = reader.u16()?;
        Ok(Question {
            id: u16::from_be_bytes([message[0], message[1]]),
            name,
            kind,
            recursion_desired: message[2] & 0x01 != 0,
            asked,
        })
    }

    /// The query as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.name.len() + 6);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&[u8::from(self.recursion_desired), 0]);
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.asked);
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out
    }

    /// The answer to this question, with `code` and these records, as bytes.
    pub fn answer(&self, code: u8, answers: &[Record], additional: &[Record]) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.id.to_be_bytes());
        // A response, authoritative, recursion desired as asked; no
        // recursion available.
        out.push(0x80 | 0x04 | u8::from(self.recursion_desired));
        out.push(code & 0x0f);
        for count in [1, answers.len(), 0, additional.len()] {
            out.extend_from_slice(&(count as u16).to_be_bytes());
        }
        out.extend_from_slice(&self.asked);
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        for record in answers.iter().chain(additional) {
            write_record(&mut out, record);
        }
        out
    }
}

impl Response {
    /// A response message.
    pub fn parse(message: &[u8]) -> Result<Response, Malformed> {
        if message.len() < 12 {
            return Err(Malformed("shorter than a header"));
        }
        if message[2] & 0x80 == 0 {
            return Err(Malformed("a query, not a response"));
        }
        let count = |at: usize| usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
        let (questions, answers, authority, additional) = (count(4), count(6), count(8), count(10));
        let mut reader = Reader { message, at: 12 };
        for _ in 0..questions {
            reader.name()?;
            reader.u16()?;
            reader.u16()?;
        }
        let mut records = |n: usize| (0..n).map(|_| reader.record()).collect::<Result<Vec<_>, _>>();
        let answers = records(answers)?;
        let _authority = records(authority)?;
        let additional = records(additional)?;
        Ok(Response {
            id: u16::from_be_bytes([message[0], message[1]]),
            code: message[3] & 0x0f,
            answers,
            additional,
        })
    }
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
}

fn write_record(out: &mut Vec<u8>, record: &Record) {
    write_name(out, &record.name);
    let kind = match &record.data {
        Data::A(_) => A,
        Data::Aaaa(_) => AAAA,
        Data::Srv { .. } => SRV,
        Data::Other(kind) => *kind,
    };
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&record.ttl.to_be_bytes());
    let length_at = out.len();
    out.extend_from_slice(&[0, 0]);
    match &record.data {
        Data::A(ip) => out.extend_from_slice(&ip.octets()),
        Data::Aaaa(ip) => out.extend_from_slice(&ip.octets()),
        Data::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            for n in [priority, weight, port] {
                out.extend_from_slice(&n.to_be_bytes());
            }
            write_name(out, target);
        }
        Data::Other(_) => {}
    }
    let length = (out.len() - length_at - 2) as u16;
    out[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
}

struct Reader<'a> {
    message: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        let taken = self.message.get(self.at..self.at + n).ok_or(Malformed("cut short"))?;
        self.at += n;
        Ok(taken)
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name at the reader, lower-cased.
    fn name(&mut self) -> Result<String, Malformed> {
        self.name_as_sent().map(|(name, _)| name)
    }

    /// A name at the reader, lower-cased and in wire form as it was sent
    /// (uncompressed), following compression pointers (a bounded number of
    /// them: a loop of pointers is malformed, not endless).
    fn name_as_sent(&mut self) -> Result<(String, Vec<u8>), Malformed> {
        let mut labels: Vec<String> = Vec::new();
        let mut wire = Vec::new();
        let mut at = self.at;
        let mut jumped = false;
        for _ in 0..128 {
            let length = *self.message.get(at).ok_or(Malformed("a name cut short"))?;
            match length {
                0 => {
                    if !jumped {
                        self.at = at + 1;
                    }
                    wire.push(0);
                    return Ok((labels.join("."), wire));
                }
                l if l & 0xc0 == 0xc0 => {
                    let low = *self.message.get(at + 1).ok_or(Malformed("a pointer cut short"))?;
                    if !jumped {
                        self.at = at + 2;
                    }
                    jumped = true;
                    at = usize::from(u16::from_be_bytes([l & 0x3f, low]));
                }
                l if l & 0xc0 == 0 => {
                    let label = self
                        .message
                        .get(at + 1..at + 1 + usize::from(l))
                        .ok_or(Malformed("a label cut short"))?;
                    // RFC 1035 §3.1: 255 bytes at most, its final 0 included.
                    if wire.len() + 1 + label.len() + 1 > 255 {
                        return Err(Malformed("a name longer than 255 bytes"));
                    }
                    wire.push(l);
                    wire.extend_from_slice(label);
                    labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                    at += 1 + usize::from(l);
                }
                _ => return Err(Malformed("a label of an unknown kind")),
            }
        }
        Err(Malformed("a name of too many labels or pointers"))
    }

    fn record(&mut self) -> Result<Record, Malformed> {
        let name = self.name()?;
        let kind = self.u16()?;
        let _class = self.u16()?;
        let ttl = self.u32()?;
        let length = usize::from(self.u16()?);
        let end = self.at + length;
        if end > self.message.len() {
            return Err(Malformed("a record cut short"));
        }
        let data = match kind {
            A if length == 4 => {
                let b = self.take(4)?;
                Data::A(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            AAAA if length == 16 => {
                let b: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
                Data::Aaaa(Ipv6Addr::from(b))
            }
            SRV if length >= 7 => Data::Srv {
                priority: self.u16()?,
                weight: self.u16()?,
                port: self.u16()?,
                target: self.name()?,
            },
            A | AAAA | SRV => return Err(Malformed("a record of the wrong length")),
            other => Data::Other(other),
        };
        self.at = end;
        Ok(Record { name, ttl, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_and_its_answer_round_trip() {
        let question = Question::new(7, "_Orders._tcp.devmesh.", SRV);
        assert_eq!(Question::parse(&question.to_bytes()), Ok(question.clone()));
        assert_eq!(question.name, "_orders._tcp.devmesh");
        let srv = Record {
            name: question.name.clone(),
            ttl: 5,
            data: Data::Srv {
                priority: 0,
                weight: 0,
                port: 24001,
                target: "orders.devmesh".into(),
            },
        };
        let a = Record {
            name: "orders.devmesh".into(),
            ttl: 5,
            data: Data::A(Ipv4Addr::LOCALHOST),
        };
        let answer =
            Response::parse(&question.answer(NOERROR, std::slice::from_ref(&srv), std::slice::from_ref(&a))).unwrap();
        assert_eq!((answer.id, answer.code), (7, NOERROR));
        assert_eq!((answer.answers, answer.additional), (vec![srv], vec![a]));
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        assert!(Question::parse(b"hello").is_err());
        assert!(Question::parse(&[0; 12]).is_err(), "no question");
        // A pointer to itself.
        let mut looped = Question::new(1, "a", A).to_bytes();
        looped.truncate(12);
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(Question::parse(&looped).is_err());
        for len in 0..40 {
            let answer = Question::new(1, "x.devmesh", A).answer(
                NOERROR,
                &[Record {
                    name: "x.devmesh".into(),
                    ttl: 1,
                    data: Data::A(Ipv4Addr::LOCALHOST),
                }],
                &[],
            );
            let _ = Response::parse(&answer[..len.min(answer.len())]);
        }
    }
}
