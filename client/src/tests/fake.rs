//! A tiny in-process stand-in for `rpyc-classic`, speaking the real protocol with canned answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rpyc_protocol::handshake::{self, GREETING_LEN, MAGIC};
use rpyc_protocol::{
    Message, NetRef, NetRefId, Op, RemoteException, ReturnMode, ServerError, ServerInfo, Value,
    codec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::codec::Framed;

/// How the fake behaves during the handshake.
#[derive(Debug, Clone)]
pub(crate) enum Behave {
    Normal,
    Version(u16),
    BadMagic,
    /// Accepts and never greets.
    Silent,
    /// Greets, then says goodbye instead of welcome.
    Refuse(String),
}

#[derive(Debug)]
pub(crate) struct Fake {
    pub(crate) addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Message>,
    seen_tx: mpsc::UnboundedSender<Message>,
    behave: Behave,
    /// The accept loop and the connections' tasks, aborted by [`Fake::kill`].
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

/// Ids are unique across all connections of all fakes, so references from two connections
/// never look alike.
static NEXT_REF: AtomicU64 = AtomicU64::new(1000);

fn new_ref(type_name: &str) -> Value {
    Value::Ref(NetRef {
        id: NetRefId(NEXT_REF.fetch_add(1, Ordering::Relaxed)),
        type_name: type_name.into(),
    })
}

pub(crate) fn zero_division() -> RemoteException {
    RemoteException {
        type_name: "ZeroDivisionError".into(),
        message: "division by zero".into(),
        traceback: "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nZeroDivisionError: division by zero\n".into(),
        mro: vec![
            "ZeroDivisionError".into(),
            "ArithmeticError".into(),
            "Exception".into(),
            "BaseException".into(),
            "object".into(),
        ],
    }
}

impl Fake {
    pub(crate) async fn start() -> Fake {
        Self::start_with(Behave::Normal).await
    }

    pub(crate) async fn start_with(behave: Behave) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let fake = Fake {
            addr,
            seen,
            seen_tx,
            behave,
            tasks: Arc::default(),
        };
        fake.listen(listener);
        fake
    }

    fn listen(&self, listener: TcpListener) {
        let (behave, seen_tx, tasks) = (
            self.behave.clone(),
            self.seen_tx.clone(),
            self.tasks.clone(),
        );
        let accept = tokio::spawn({
            let tasks = tasks.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let conn = tokio::spawn(serve(stream, behave.clone(), seen_tx.clone()));
                    tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(conn.abort_handle());
                }
            }
        });
        tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(accept.abort_handle());
    }

    /// Stops listening and drops every connection, as a killed server does.
    pub(crate) fn kill(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        tasks.iter().for_each(AbortHandle::abort);
    }

    /// Kills the server if it runs, then listens again on the same address, as a restarted
    /// server does.
    pub(crate) async fn restart(&self) {
        self.kill();
        // The aborted accept loop drops its listener when the runtime next gets to it.
        for _ in 0..200 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.listen(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("cannot listen on {} again", self.addr);
    }

    pub(crate) fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The next message the server received.
    pub(crate) async fn next_seen(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(2), self.seen.recv())
            .await
            .expect("the fake server saw nothing in time")
            .expect("the fake server stopped")
    }

    /// Skips messages until one matches.
    pub(crate) async fn wait_for(&mut self, what: impl Fn(&Message) -> bool) -> Message {
        loop {
            let m = self.next_seen().await;
            if what(&m) {
                return m;
            }
        }
    }

    /// Every message received until (and without) the next ping; send a ping first.
    pub(crate) async fn until_ping(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            match self.next_seen().await {
                Message::Ping { .. } => return out,
                m => out.push(m),
            }
        }
    }
}

enum Reply {
    Answer(Result<Value, ServerError>),
    Silent,
    Close,
    Goodbye,
    Later(Duration, Result<Value, ServerError>),
    PingThenNone,
    /// A response whose result is not a valid value.
    Garbled,
}

struct Conn {
    /// Remaining items of each open iterator.
    iters: HashMap<NetRefId, std::ops::Range<i64>>,
}

impl Conn {
    fn batch(range: &mut std::ops::Range<i64>, batch: u32, mode: ReturnMode) -> Vec<Value> {
        range
            .take(batch as usize)
            .map(|i| match mode {
                ReturnMode::Ref => new_ref("builtins.int"),
                _ => Value::Int(i),
            })
            .collect()
    }

    fn reply(&mut self, op: Op) -> Reply {
        let by_mode = |mode: ReturnMode, value: Value, type_name: &str| match mode {
            ReturnMode::Ref => new_ref(type_name),
            _ => value,
        };
        let ok = Reply::Answer;
        match op {
            Op::Eval { expr, mode } => match expr.as_str() {
                "sleep" => Reply::Silent,
                "close" => Reply::Close,
                "goodbye" => Reply::Goodbye,
                "pingme" => Reply::PingThenNone,
                "garbled" => Reply::Garbled,
                "raise" => ok(Err(ServerError::Exception(Box::new(zero_division())))),
                "slow_ref" => Reply::Later(Duration::from_millis(80), Ok(new_ref("builtins.list"))),
                "'abc'" => ok(Ok(by_mode(mode, Value::Str("abc".into()), "builtins.str"))),
                "bigint" => ok(Ok(Value::BigInt("123456789012345678901234567890".into()))),
                _ => ok(Ok(by_mode(
                    mode,
                    expr.parse::<i64>().map_or(Value::Int(2), Value::Int),
                    "builtins.object",
                ))),
            },
            Op::Execute { code } if code == "raise" => {
                ok(Err(ServerError::Exception(Box::new(zero_division()))))
            }
            Op::Execute { .. }
            | Op::SetAttr { .. }
            | Op::DelAttr { .. }
            | Op::SetItem { .. }
            | Op::DelItem { .. } => ok(Ok(Value::None)),
            Op::Import { .. } | Op::Builtins => ok(Ok(new_ref("builtins.module"))),
            Op::Namespace => ok(Ok(new_ref("builtins.dict"))),
            Op::GetAttr { name, mode, .. } => {
                ok(Ok(by_mode(mode, Value::Str(name), "builtins.object")))
            }
            Op::Call { args, mode, .. } | Op::CallMethod { args, mode, .. } => ok(Ok(by_mode(
                mode,
                Value::Tuple(vec![
                    Value::List(args.positional),
                    Value::Dict(
                        args.keyword
                            .into_iter()
                            .map(|(k, v)| (Value::Str(k), v))
                            .collect(),
                    ),
                ]),
                "builtins.object",
            ))),
            Op::GetItem { key, mode, .. } => ok(Ok(by_mode(mode, key, "builtins.object"))),
            Op::Len { .. } => ok(Ok(Value::Int(3))),
            Op::Contains { .. } | Op::Compare { .. } => ok(Ok(Value::Bool(true))),
            Op::Repr { .. } => ok(Ok(Value::Str("<fake>".into()))),
            Op::Str { .. } => ok(Ok(Value::Str("fake".into()))),
            Op::Dir { .. } => ok(Ok(Value::List(vec![
                Value::Str("a".into()),
                Value::Str("b".into()),
            ]))),
            Op::Hash { .. } => ok(Ok(Value::Int(42))),
            Op::Obtain { .. } => ok(Ok(Value::List(vec![Value::Int(7)]))),
            Op::Iter { batch, mode, .. } => {
                let mut range = 0..5;
                let items = Self::batch(&mut range, batch, mode);
                if range.is_empty() {
                    ok(Ok(Value::Tuple(vec![
                        Value::None,
                        Value::List(items),
                        Value::Bool(true),
                    ])))
                } else {
                    let iter = new_ref("builtins.range_iterator");
                    if let Value::Ref(r) = &iter {
                        self.iters.insert(r.id, range);
                    }
                    ok(Ok(Value::Tuple(vec![
                        iter,
                        Value::List(items),
                        Value::Bool(false),
                    ])))
                }
            }
            Op::Next { iter, batch, mode } => match self.iters.remove(&iter) {
                None => ok(Err(ServerError::UnknownReference(iter))),
                Some(mut range) => {
                    let items = Self::batch(&mut range, batch, mode);
                    let exhausted = range.is_empty();
                    self.iters.insert(iter, range);
                    ok(Ok(Value::Tuple(vec![
                        Value::List(items),
                        Value::Bool(exhausted),
                    ])))
                }
            },
        }
    }
}

/// The message of `frame`, reading its blobs (if any) into memory first.
async fn read_message(
    framed: &mut Framed<TcpStream, codec::FrameCodec>,
    frame: codec::Frame,
) -> Option<Message> {
    if frame.blobs.is_empty() {
        return Some(codec::decode(&frame.payload).expect("the client sent a malformed frame"));
    }
    let mut buffered = framed.read_buffer_mut().split();
    let placed = codec::read_blobs_to_memory(&mut buffered, framed.get_mut(), &frame.blobs)
        .await
        .ok()?;
    *framed.read_buffer_mut() = buffered;
    Some(
        codec::decode_blobs(&frame.payload.freeze(), placed)
            .expect("the client sent a malformed blob frame"),
    )
}

async fn serve(mut stream: TcpStream, behave: Behave, seen: mpsc::UnboundedSender<Message>) {
    let mut theirs = [0u8; GREETING_LEN];
    if stream.read_exact(&mut theirs).await.is_err() {
        return;
    }
    let mut ours = handshake::greeting();
    match &behave {
        Behave::Silent => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return;
        }
        Behave::BadMagic => ours[..6].copy_from_slice(b"HTTP/1"),
        Behave::Version(v) => ours[6..].copy_from_slice(&v.to_be_bytes()),
        Behave::Normal | Behave::Refuse(_) => {}
    }
    assert_eq!(&theirs[..6], &MAGIC);
    if stream.write_all(&ours).await.is_err()
        || !matches!(behave, Behave::Normal | Behave::Refuse(_))
    {
        return;
    }
    let mut framed = Framed::new(
        stream,
        codec::framing(codec::DEFAULT_MAX_FRAME_BYTES).accepting_blobs(),
    );
    let first = match &behave {
        Behave::Refuse(reason) => Message::Goodbye {
            reason: reason.clone(),
        },
        _ => Message::Welcome(ServerInfo {
            server: "fake 0.0.0".into(),
            python_version: "3.12.0 (fake)".into(),
            connection_id: 1,
        }),
    };
    let Ok(frame) = codec::encode(&first) else {
        return;
    };
    if framed.send(frame).await.is_err() || matches!(behave, Behave::Refuse(_)) {
        return;
    }
    let (later_tx, mut later_rx) = mpsc::unbounded_channel::<Message>();
    let mut conn = Conn {
        iters: HashMap::new(),
    };
    loop {
        let message = tokio::select! {
            frame = framed.next() => match frame {
                Some(Ok(frame)) => match read_message(&mut framed, frame).await {
                    Some(message) => message,
                    None => return,
                },
                _ => return,
            },
            Some(out) = later_rx.recv() => {
                let Ok(frame) = codec::encode(&out) else { return };
                if framed.send(frame).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let _ = seen.send(message.clone());
        let out = match message {
            Message::Ping { id } => vec![Message::Pong { id }],
            Message::Goodbye { .. } => return,
            Message::Request { id, op } => match conn.reply(op) {
                Reply::Answer(result) => vec![Message::Response { id, result }],
                Reply::Silent => vec![],
                Reply::Close => return,
                Reply::Goodbye => vec![Message::Goodbye {
                    reason: "server shutting down".into(),
                }],
                Reply::Garbled => {
                    let Ok(frame) = codec::encode(&Message::Response {
                        id,
                        result: Ok(Value::None),
                    }) else {
                        return;
                    };
                    // The last byte is the value's variant: make it one that does not exist.
                    let mut garbled = frame.to_vec();
                    if let Some(last) = garbled.last_mut() {
                        *last = 99;
                    }
                    if framed.send(garbled.into()).await.is_err() {
                        return;
                    }
                    vec![]
                }
                Reply::PingThenNone => vec![
                    Message::Ping {
                        id: rpyc_protocol::RequestId(999),
                    },
                    Message::Response {
                        id,
                        result: Ok(Value::None),
                    },
                ],
                Reply::Later(delay, result) => {
                    let later_tx = later_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = later_tx.send(Message::Response { id, result });
                    });
                    vec![]
                }
            },
            _ => vec![],
        };
        let closing = out.iter().any(|m| matches!(m, Message::Goodbye { .. }));
        for m in out {
            let Ok(frame) = codec::encode(&m) else { return };
            if framed.send(frame).await.is_err() {
                return;
            }
        }
        if closing {
            return;
        }
    }
}
