//! System requests: scatter-gather to every server, and requests directed at one.

use std::time::Duration;

use async_nats::{Client, HeaderMap, Message, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::snappy::{inflate, is_snappy};
use super::wire::{Reply, UserInfo};
use crate::config::Compression;
use tracing::warn;

/// `$SYS.REQ.SERVER.PING.CONNZ`: every server answers with its connections.
pub const PING_CONNZ: &str = "$SYS.REQ.SERVER.PING.CONNZ";
/// `$SYS.REQ.SERVER.PING.STATSZ`: every server answers with its statistics.
pub const PING_STATSZ: &str = "$SYS.REQ.SERVER.PING.STATSZ";
/// `$SYS.REQ.SERVER.PING.VARZ`: every server answers with its settings and counters.
pub const PING_VARZ: &str = "$SYS.REQ.SERVER.PING.VARZ";
/// `$SYS.REQ.ACCOUNT.PING.STATZ`: every server answers with per-account connection counts.
pub const PING_ACCOUNT_STATZ: &str = "$SYS.REQ.ACCOUNT.PING.STATZ";
/// `$SYS.REQ.USER.INFO`: who am I.
pub const USER_INFO: &str = "$SYS.REQ.USER.INFO";

/// A system request that failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nobody subscribes to the subject: not in the system account, or the server is gone.
    #[error("no responders")]
    NoResponders,
    /// No answer in time.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The NATS connection failed the request.
    #[error("nats request failed")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Sends system requests over one client.
#[derive(Clone, Debug)]
pub struct System {
    client: Client,
    /// The `Accept-Encoding` header its requests carry, when it asks for compressed replies.
    accept: Option<HeaderMap>,
}

impl System {
    /// Wraps a connected client.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            accept: None,
        }
    }

    /// The same client, asking for replies compressed as `compression` says. Compressed replies
    /// are decompressed before anyone sees them, whoever asked.
    pub fn compressed(mut self, compression: Compression) -> Self {
        self.accept = match compression {
            Compression::None => None,
            Compression::Snappy => {
                let mut h = HeaderMap::new();
                h.insert("Accept-Encoding", "snappy");
                Some(h)
            }
        };
        self
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends `body` to `subject` and gathers replies until `done` says so or `timeout` passes.
    ///
    /// There is no end-of-replies marker in NATS, so `done` sees each reply and decides.
    pub async fn scatter(
        &self,
        subject: &str,
        body: Bytes,
        timeout: Duration,
        mut done: impl FnMut(&Message) -> bool,
    ) -> Result<Vec<Message>, RequestError> {
        let replies = self
            .scatter_many(&[(subject, body)], timeout, Duration::ZERO, |_, m| done(m))
            .await?;
        Ok(replies.into_iter().map(|(_, m)| m).collect())
    }

    /// Sends several scatter requests at once and gathers all their replies in one loop, until
    /// `done(request index, reply)` says so or `timeout` passes: a silent server costs one
    /// timeout, not one per request. After `done`, replies still arriving within `linger` are
    /// kept too (for when the expected count may be an underestimate).
    pub async fn scatter_many(
        &self,
        requests: &[(&str, Bytes)],
        timeout: Duration,
        linger: Duration,
        mut done: impl FnMut(usize, &Message) -> bool,
    ) -> Result<Vec<(usize, Message)>, RequestError> {
        let mut replies = Vec::new();
        let mut finished = false;
        self.scatter_each(requests, timeout, linger, |i, msg| {
            // Late replies (within `linger`) are kept but not shown to `done`.
            let stop = !finished && done(i, &msg);
            finished |= stop;
            replies.push((i, msg));
            stop
        })
        .await?;
        Ok(replies)
    }

    /// Like [`System::scatter_many`], but hands each reply to `each` as it arrives instead of
    /// keeping it: a caller that parses and drops replies holds one reply at a time, not all.
    /// `each` returns whether gathering is done; after that, late replies within `linger` still
    /// go to `each` (its answer is then ignored). Returns how many replies were handed over.
    pub async fn scatter_each(
        &self,
        requests: &[(&str, Bytes)],
        timeout: Duration,
        linger: Duration,
        mut each: impl FnMut(usize, Message) -> bool,
    ) -> Result<usize, RequestError> {
        self.scatter_raw(requests, timeout, linger, |i, msg| each(i, decoded(msg)))
            .await
    }

    /// [`System::scatter_each`] with replies handed over as they came: a compressed one still
    /// compressed ([`Payload::of`](super::snappy::Payload::of) reads it; [`decoded`]
    /// decompresses it).
    pub(crate) async fn scatter_raw(
        &self,
        requests: &[(&str, Bytes)],
        timeout: Duration,
        linger: Duration,
        mut each: impl FnMut(usize, Message) -> bool,
    ) -> Result<usize, RequestError> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(boxed)?;
        for (i, (subject, body)) in requests.iter().enumerate() {
            let (subject, reply) = (subject.to_string(), format!("{inbox}.{i}"));
            match &self.accept {
                None => {
                    self.client
                        .publish_with_reply(subject, reply, body.clone())
                        .await
                }
                Some(h) => {
                    self.client
                        .publish_with_reply_and_headers(subject, reply, h.clone(), body.clone())
                        .await
                }
            }
            .map_err(boxed)?;
        }
        let mut deadline = Instant::now() + timeout;
        let mut finished = false;
        let mut count = 0;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
            let Some(i) = msg
                .subject
                .rsplit('.')
                .next()
                .and_then(|t| t.parse::<usize>().ok())
            else {
                continue;
            };
            if msg.status == Some(StatusCode::NO_RESPONDERS) {
                if count == 0 {
                    return Err(RequestError::NoResponders);
                }
                continue;
            }
            count += 1;
            let stop = each(i, msg) && !finished;
            if stop {
                if linger.is_zero() {
                    break;
                }
                finished = true;
                deadline = deadline.min(Instant::now() + linger);
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(count)
    }

    /// Sends one request and waits for its single reply.
    pub async fn request(
        &self,
        subject: String,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        self.request_raw(subject, body, timeout).await.map(decoded)
    }

    /// [`System::request`] with the reply as it came: still compressed when it was.
    pub(crate) async fn request_raw(
        &self,
        subject: String,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let mut req = async_nats::Request::new()
            .payload(body)
            .timeout(Some(timeout));
        if let Some(h) = &self.accept {
            req = req.headers(h.clone());
        }
        self.client
            .send_request(subject, req)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => RequestError::NoResponders,
                async_nats::RequestErrorKind::TimedOut => RequestError::TimedOut(timeout),
                _ => boxed(e),
            })
    }

    /// Who connwatch is connected as (`$SYS.REQ.USER.INFO`).
    pub async fn user_info(&self, timeout: Duration) -> Result<UserInfo, RequestError> {
        let msg = self
            .request(USER_INFO.into(), Bytes::new(), timeout)
            .await?;
        let reply: Reply<UserInfo> = parse(&msg.payload).map_err(boxed)?;
        Ok(reply.data.unwrap_or_default())
    }
}

/// `msg` with its payload decompressed when a `Content-Encoding: snappy` header
/// says it is compressed. A payload that does not decompress is left as it came (it then fails
/// to parse, and counts as a bad reply).
pub(crate) fn decoded(mut msg: Message) -> Message {
    if !is_snappy(&msg) {
        return msg;
    }
    match inflate(&msg.payload) {
        Ok(payload) => msg.payload = payload,
        Err(e) => warn!(error = %e, subject = %msg.subject, "a snappy reply does not decompress"),
    }
    msg
}

/// Parses a JSON reply.
pub fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(payload)
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> RequestError {
    RequestError::Nats(Box::new(e))
}

/// `$SYS.REQ.SERVER.<id>.<endpoint>`: a request to one server, by id.
pub fn server_subject(server_id: &str, endpoint: &str) -> String {
    format!("$SYS.REQ.SERVER.{server_id}.{endpoint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snappy_reply_is_decompressed_and_a_broken_one_left_to_fail_its_parse() {
        let reply = |payload: Vec<u8>| {
            let mut h = HeaderMap::new();
            h.insert("Content-Encoding", "snappy");
            Message {
                subject: "_INBOX.x.0".into(),
                reply: None,
                payload: payload.into(),
                headers: Some(h),
                status: None,
                description: None,
                length: 0,
            }
        };
        let text = br#"{"server":{"name":"n1","id":"N1"},"data":{"total":0}}"#.to_vec();
        let mut framed = crate::nats::snappy::framed(&text);
        assert_eq!(decoded(reply(framed.clone())).payload, text);
        // One byte of the block changed: its checksum fails, the bytes stay as they came, and
        // the sweep's parser refuses them (a bad reply).
        let last = framed.len() - 1;
        framed[last] ^= 0x55;
        let broken = decoded(reply(framed.clone()));
        assert_eq!(broken.payload, framed);
        assert!(crate::nats::page::parse_reply(&broken.payload, 10).is_err());
    }
}
