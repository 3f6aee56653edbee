//! A stub DNS server on loopback that a test controls: RFC 1035 over UDP,
//! answers built with `hickory-proto`, TTL 1 s. It stands in for a cluster's
//! DNS (CoreDNS answering for a headless Service) so that tests can change
//! the answer at will.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// The one name the stub knows (fully qualified).
pub const NAME: &str = "triton-headless.models.svc.cluster.local.";

/// What the stub answers for `NAME`.
#[derive(Clone)]
pub enum Answer {
    Addresses(Vec<Ipv4Addr>),
    /// SERVFAIL: the server is broken, the name may still exist.
    ServFail,
    /// NXDOMAIN: the name has no records (the Service's last pod left).
    NxDomain,
}

/// A DNS server on 127.0.0.1 (UDP) answering A queries for `NAME` from `answer`;
/// AAAA queries get an empty NOERROR (the replicas are IPv4 only).
pub struct StubDns {
    pub port: u16,
    answer: Arc<Mutex<Answer>>,
    queries: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl StubDns {
    pub async fn start(first: Answer) -> StubDns {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let port = sock.local_addr().unwrap().port();
        let answer = Arc::new(Mutex::new(first));
        let queries = Arc::new(Mutex::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else { continue };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                *q.lock().unwrap() += 1;
                let reply = respond(&query, &a.lock().unwrap().clone());
                let _ = sock.send_to(&reply.to_vec().expect("encode reply"), peer).await;
            }
        });
        StubDns { port, answer, queries, task }
    }

    pub fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    pub fn queries(&self) -> u64 {
        *self.queries.lock().unwrap()
    }
}

impl Drop for StubDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(query: &Message, answer: &Answer) -> Message {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    m.add_queries(query.queries().to_vec());
    let Some(q) = query.queries().first() else {
        m.set_response_code(ResponseCode::FormErr);
        return m;
    };
    if q.name().to_ascii() != NAME {
        m.set_response_code(ResponseCode::NXDomain);
        return m;
    }
    match answer {
        Answer::ServFail => {
            m.set_response_code(ResponseCode::ServFail);
        }
        Answer::NxDomain => {
            m.set_response_code(ResponseCode::NXDomain);
        }
        Answer::Addresses(ips) if q.query_type() == RecordType::A => {
            for ip in ips {
                m.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(A(*ip))));
            }
        }
        Answer::Addresses(_) => {}
    }
    m
}
