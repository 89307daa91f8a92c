//! Reconnecting after the connection drops (issue 3): [`ReconnectPolicy`], [`ReconnectEvent`],
//! and the link that gives a [`Connection`](crate::Connection) its current session.
//!
//! A [`Connection`](crate::Connection) is a handle on a `Link`, which holds the current
//! session behind a lock. Without a policy the link never changes session. With one, a call
//! that finds the session closed opens a new one first (with backoff between attempts), runs the
//! policy's setup script on it, and then goes ahead. Three rules keep this safe:
//!
//! - A call already sent when the connection dropped fails with
//!   [`Error::Disconnected`]. It is never sent again: it may have run.
//! - [`RemoteObject`](crate::RemoteObject)s keep the session they came from, so after a
//!   reconnect they fail with [`Error::StaleReference`] instead of reaching whatever object
//!   the new server has under the same id.
//! - One caller reconnects at a time; callers that find the session closed meanwhile wait for
//!   that reconnect and use its session (or get its error), rather than starting their own.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpyc_protocol::{Op, ServerInfo};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::session::{Config, Session, lock};

/// How a [`Connection`](crate::Connection) reconnects after its connection drops; set with
/// [`ConnectionBuilder::reconnect`](crate::ConnectionBuilder::reconnect).
///
/// When a call finds the connection closed, the client makes up to
/// [`max_attempts`](Self::max_attempts) connection attempts: the first at once, then after
/// [`initial_backoff`](Self::initial_backoff), growing by [`multiplier`](Self::multiplier)
/// each time up to [`max_backoff`](Self::max_backoff). Each attempt is bounded by the
/// connection's connect timeout. After a successful attempt the [`setup`](Self::setup) script
/// runs on the new connection, [`on_reconnect`](Self::on_reconnect) is called, and the call
/// goes ahead. If every attempt fails, the call fails with [`Error::ReconnectFailed`] and the
/// next call starts a new round.
///
/// Calls that were in flight when the connection dropped fail with [`Error::Disconnected`]
/// and are never sent again, since they may have had effects. Remote objects from the old
/// connection fail with [`Error::StaleReference`]. The first connect is not retried: an
/// unreachable server at start-up is reported at once.
///
/// Do not pass an object from before a reconnect as an *argument* to a call on the new
/// connection: references are checked by id and type name, and a new server process hands out
/// the same ids again, so such an argument may name another object of the same type.
///
/// ```no_run
/// use std::time::Duration;
/// use rpyc_client::{Connection, ReconnectPolicy};
///
/// # async fn demo() -> rpyc_client::Result<()> {
/// let policy = ReconnectPolicy::new()
///     .initial_backoff(Duration::from_millis(100))
///     .max_backoff(Duration::from_secs(2))
///     .max_attempts(20)
///     .setup("import math\ncache = {}")
///     .on_reconnect(|e| eprintln!("reconnected to {} (#{})", e.peer, e.reconnects));
/// let conn = Connection::builder("localhost").reconnect(policy).connect().await?;
/// conn.execute("import math\ncache = {}").await?; // the setup script runs after reconnects only
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use = "a policy does nothing until given to `ConnectionBuilder::reconnect`"]
pub struct ReconnectPolicy {
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    max_attempts: u32,
    setup: Option<String>,
    on_reconnect: Option<Callback>,
}

/// What [`ReconnectPolicy::on_reconnect`] keeps.
type Callback = Arc<dyn Fn(&ReconnectEvent) + Send + Sync>;

impl fmt::Debug for ReconnectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectPolicy")
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("multiplier", &self.multiplier)
            .field("max_attempts", &self.max_attempts)
            .field("setup", &self.setup)
            .field("on_reconnect", &self.on_reconnect.is_some())
            .finish()
    }
}

impl Default for ReconnectPolicy {
    /// 10 attempts, 100 ms backoff doubling up to 5 s (about 21 s of waiting in all), no setup
    /// script, no callback.
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            max_attempts: 10,
            setup: None,
            on_reconnect: None,
        }
    }
}

impl ReconnectPolicy {
    /// The default policy; see [`Default`](#impl-Default-for-ReconnectPolicy).
    pub fn new() -> Self {
        Self::default()
    }

    /// Wait before the second attempt (default 100 ms). The first attempt is made at once.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Longest wait between two attempts (default 5 s).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Factor by which the wait grows after each failed attempt (default 2; at least 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Attempts per reconnect, the first included (default 10; at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Python statements run on each new connection after a reconnect, before any call, to
    /// restore the state the program relies on (imports, variables). The namespace of a new
    /// connection starts empty. Not run on the first connect.
    ///
    /// If the script raises, reconnecting stops at once (trying again would raise again) and
    /// the call fails with [`Error::ReconnectFailed`] holding the remote exception.
    pub fn setup(mut self, code: impl Into<String>) -> Self {
        self.setup = Some(code.into());
        self
    }

    /// Called after each successful reconnect (on the task that reconnected; keep it short
    /// and do not block). Reconnects are also counted by
    /// [`Connection::reconnects`](crate::Connection::reconnects) and logged as a `tracing`
    /// event at INFO level; failed attempts are logged at WARN level.
    pub fn on_reconnect(
        mut self,
        callback: impl Fn(&ReconnectEvent) + Send + Sync + 'static,
    ) -> Self {
        self.on_reconnect = Some(Arc::new(callback));
        self
    }

    /// The wait before attempt number `attempt` (1-based): zero for the first, then
    /// `initial_backoff × multiplier^(attempt − 2)`, at most `max_backoff`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = rpyc_client::ReconnectPolicy::new()
    ///     .initial_backoff(Duration::from_millis(100))
    ///     .max_backoff(Duration::from_millis(300));
    /// let ms = |n| p.delay_before(n).as_millis();
    /// assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(5)], [0, 100, 200, 300, 300]);
    /// ```
    pub fn delay_before(&self, attempt: u32) -> Duration {
        let Some(exponent) = attempt.checked_sub(2) else {
            return Duration::ZERO;
        };
        let exponent = i32::try_from(exponent).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// What [`ReconnectPolicy::on_reconnect`] is told after a successful reconnect.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconnectEvent {
    /// The server's address.
    pub peer: String,
    /// Reconnects of this connection so far, this one included.
    pub reconnects: u64,
    /// Attempts this reconnect took (1 if the first one succeeded).
    pub attempts: u32,
    /// Time from the first attempt until the new connection was ready (setup script included).
    pub elapsed: Duration,
    /// What the new server said about itself.
    pub server: ServerInfo,
    /// Whether [`Connection::reconnect`](crate::Connection::reconnect) asked for it, rather
    /// than a call that found the connection closed.
    pub forced: bool,
}

/// The state a [`Connection`](crate::Connection) handle and its clones share: the current
/// session and how to replace it.
pub(crate) struct Link {
    /// The server's address, `host:port`.
    addr: String,
    config: Config,
    policy: Option<ReconnectPolicy>,
    current: Mutex<Arc<Session>>,
    /// Set by `close` (under the `current` lock): a closed connection does not reconnect by
    /// itself. Cleared when `reconnect` succeeds.
    closed: AtomicBool,
    /// How many times `close` was called, so a reconnect can tell that it was closed meanwhile.
    closes: AtomicU64,
    /// Held while reconnecting, so that one caller reconnects and the others wait for it.
    gate: tokio::sync::Mutex<()>,
    reconnects: AtomicU64,
    /// Rounds of attempts that failed, and the last failure: callers that waited for a round
    /// that failed get its error instead of starting another round straight away.
    failed_rounds: AtomicU64,
    last_failure: Mutex<Option<(u32, Arc<Error>)>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("reconnects", &self.reconnects())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link whose current session is `session`.
    pub(crate) fn new(session: Arc<Session>, policy: Option<ReconnectPolicy>) -> Arc<Link> {
        let link = Arc::new(Link {
            addr: session.peer().to_owned(),
            config: session.config().clone(),
            policy,
            current: Mutex::new(session.clone()),
            closed: AtomicBool::new(false),
            closes: AtomicU64::new(0),
            gate: tokio::sync::Mutex::new(()),
            reconnects: AtomicU64::new(0),
            failed_rounds: AtomicU64::new(0),
            last_failure: Mutex::new(None),
        });
        session.set_link(Arc::downgrade(&link));
        link
    }

    /// The link `session` serves, or a new one without a policy if that link is gone.
    pub(crate) fn of(session: &Arc<Session>) -> Arc<Link> {
        session
            .link()
            .unwrap_or_else(|| Link::new(session.clone(), None))
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn has_policy(&self) -> bool {
        self.policy.is_some()
    }

    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Acquire)
    }

    /// The current session, as it is (possibly closed).
    pub(crate) fn current(&self) -> Arc<Session> {
        lock(&self.current).clone()
    }

    /// The session a new call should use: the current one, or a new one if it has closed and
    /// the policy allows reconnecting.
    pub(crate) async fn session(self: &Arc<Self>) -> Result<Arc<Session>> {
        let current = self.current();
        if self.policy.is_none() || !current.is_closed() || self.closed.load(Ordering::Acquire) {
            return Ok(current);
        }
        self.replace(current, false).await
    }

    /// Replaces the current session by a new one even if it is still open (closing the old
    /// one), also after [`close`](Self::close).
    pub(crate) async fn reconnect(self: &Arc<Self>) -> Result<()> {
        let current = self.current();
        self.replace(current, true).await.map(drop)
    }

    /// Closes the current session and stops reconnecting by itself.
    pub(crate) async fn close(&self) {
        let current = {
            let current = lock(&self.current);
            self.closed.store(true, Ordering::Release);
            self.closes.fetch_add(1, Ordering::AcqRel);
            current.clone()
        };
        current.close().await;
    }

    /// Replaces `seen`, the session the caller found closed (or wants replaced), unless
    /// another caller already did.
    async fn replace(self: &Arc<Self>, seen: Arc<Session>, forced: bool) -> Result<Arc<Session>> {
        let rounds = self.failed_rounds.load(Ordering::Acquire);
        let closes = self.closes.load(Ordering::Acquire);
        let gate = self.gate.lock().await;
        let current = self.current();
        if !Arc::ptr_eq(&current, &seen) {
            // Another caller reconnected while this one waited.
            return Ok(current);
        }
        if !forced {
            if self.closed.load(Ordering::Acquire) {
                return Ok(current);
            }
            if self.failed_rounds.load(Ordering::Acquire) != rounds {
                if let Some((attempts, last)) = lock(&self.last_failure).clone() {
                    return Err(self.failed(attempts, last));
                }
            }
        }

        let max_attempts = self.policy.as_ref().map_or(1, |p| p.max_attempts);
        let started = Instant::now();
        let mut attempt = 0;
        let fresh = loop {
            attempt += 1;
            if let Some(policy) = &self.policy {
                tokio::time::sleep(policy.delay_before(attempt)).await;
            }
            match self.open().await {
                Ok(session) => break session,
                Err(e) => {
                    warn!(peer = %self.addr, attempt, max_attempts, error = %e, "reconnect attempt failed");
                    // A setup script that raised would raise again.
                    if e.is_remote() || attempt >= max_attempts {
                        let last = Arc::new(e);
                        *lock(&self.last_failure) = Some((attempt, last.clone()));
                        self.failed_rounds.fetch_add(1, Ordering::AcqRel);
                        return Err(self.failed(attempt, last));
                    }
                }
            }
        };

        fresh.set_link(Arc::downgrade(self));
        let old = {
            let mut current = lock(&self.current);
            if self.closes.load(Ordering::Acquire) != closes {
                None
            } else {
                self.closed.store(false, Ordering::Release);
                Some(std::mem::replace(&mut *current, fresh.clone()))
            }
        };
        let Some(old) = old else {
            // `close` was called while reconnecting.
            drop(gate);
            fresh.close().await;
            return Err(Error::Disconnected {
                peer: self.addr.clone(),
                reason: "closed by the client".into(),
            });
        };
        old.supersede();
        let reconnects = self.reconnects.fetch_add(1, Ordering::AcqRel) + 1;
        let event = ReconnectEvent {
            peer: self.addr.clone(),
            reconnects,
            attempts: attempt,
            elapsed: started.elapsed(),
            server: fresh.info().clone(),
            forced,
        };
        info!(
            peer = %event.peer,
            reconnects,
            attempts = attempt,
            elapsed = ?event.elapsed,
            connection_id = event.server.connection_id,
            forced,
            "reconnected"
        );
        drop(gate);
        // Fails whatever is still in flight on the old session (forced case) and stops its
        // tasks; it is closed already when the server went away.
        old.close().await;
        if let Some(callback) = self.policy.as_ref().and_then(|p| p.on_reconnect.as_ref()) {
            callback(&event);
        }
        Ok(fresh)
    }

    /// One attempt: connect, then run the setup script.
    async fn open(&self) -> Result<Arc<Session>> {
        let session = Session::connect(self.addr.clone(), self.config.clone()).await?;
        if let Some(code) = self.policy.as_ref().and_then(|p| p.setup.as_deref()) {
            let setup = Op::Execute { code: code.into() };
            if let Err(e) = session.request(setup, self.config.request_timeout).await {
                session.close().await;
                return Err(e);
            }
        }
        Ok(session)
    }

    fn failed(&self, attempts: u32, last: Arc<Error>) -> Error {
        Error::ReconnectFailed {
            peer: self.addr.clone(),
            attempts,
            last,
        }
    }
}
