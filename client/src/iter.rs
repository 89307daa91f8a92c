//! Batched iteration over remote iterables: [`RemoteIter`] (items stay remote) and
//! [`TypedIter`] (items copied and converted).
//!
//! The first batch comes with `Op::Iter`, the next ones with `Op::Next`, each holding up to the
//! connection's batch size, so iterating costs one round trip per batch rather than per item. The
//! remote iterator is released once it is exhausted, or when the Rust iterator is dropped.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use rpyc_protocol::{Op, ReturnMode, Value};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::object::RemoteObject;
use crate::session::Session;

/// The state machine shared by both iterator kinds.
#[derive(Debug)]
struct Batches {
    session: Arc<Session>,
    /// The iterable, until the first batch has been fetched.
    source: Option<RemoteObject>,
    /// The remote iterator, until it is exhausted.
    iter: Option<RemoteObject>,
    /// Set once nothing more will come (exhausted, or an error ended the iteration).
    done: bool,
    mode: ReturnMode,
}

impl Batches {
    fn new(source: RemoteObject, mode: ReturnMode) -> Self {
        Batches {
            session: source.session().clone(),
            source: Some(source),
            iter: None,
            done: false,
            mode,
        }
    }

    /// The next batch (possibly empty), or `None` when the iteration is over. An error ends the
    /// iteration.
    async fn fetch(&mut self) -> Option<Result<Vec<Value>>> {
        if self.done {
            return None;
        }
        let result = self.fetch_inner().await;
        if result.is_err() {
            self.finish();
        }
        Some(result)
    }

    fn finish(&mut self) {
        self.done = true;
        self.source = None;
        // Dropping the iterator's last handle releases it on the server.
        self.iter = None;
    }

    async fn fetch_inner(&mut self) -> Result<Vec<Value>> {
        let batch = self.session.config().batch_size;
        if let Some(source) = &self.source {
            let reply = source
                .request(Op::Iter {
                    obj: source.netref().id,
                    batch,
                    mode: self.mode,
                })
                .await?;
            const WHAT: &str = "(iterator, items, exhausted)";
            let [iter, items, exhausted] = tuple(reply, WHAT)?;
            let (items, exhausted) = match (items, exhausted) {
                (Value::List(items), Value::Bool(exhausted)) => (items, exhausted),
                (items, exhausted) => {
                    let got = Value::Tuple(vec![iter, items, exhausted]);
                    return Err(Error::unexpected_reply(WHAT, &got));
                }
            };
            self.source = None;
            self.iter = match iter {
                Value::None => None,
                iter => Some(RemoteObject::wrap(&self.session, iter)?),
            };
            if exhausted || self.iter.is_none() {
                self.finish();
            }
            Ok(items)
        } else if let Some(iter) = &self.iter {
            let reply = iter
                .request(Op::Next {
                    iter: iter.netref().id,
                    batch,
                    mode: self.mode,
                })
                .await?;
            const WHAT: &str = "(items, exhausted)";
            let [items, exhausted] = tuple(reply, WHAT)?;
            let (items, exhausted) = match (items, exhausted) {
                (Value::List(items), Value::Bool(exhausted)) => (items, exhausted),
                (items, exhausted) => {
                    let got = Value::Tuple(vec![items, exhausted]);
                    return Err(Error::unexpected_reply(WHAT, &got));
                }
            };
            if exhausted {
                self.finish();
            }
            Ok(items)
        } else {
            self.finish();
            Ok(Vec::new())
        }
    }
}

/// The elements of a reply that must be an `N`-tuple.
fn tuple<const N: usize>(reply: Value, what: &str) -> Result<[Value; N]> {
    match reply {
        Value::Tuple(parts) => <[Value; N]>::try_from(parts)
            .map_err(|parts| Error::unexpected_reply(what, &Value::Tuple(parts))),
        other => Err(Error::unexpected_reply(what, &other)),
    }
}

/// Iterates a remote iterable; each item is a [`RemoteObject`].
///
/// Made by [`RemoteObject::iter`]. Items are fetched in batches; `next` returns `None` at the
/// end, and an error ends the iteration.
#[derive(Debug)]
pub struct RemoteIter {
    batches: Batches,
    buffer: VecDeque<RemoteObject>,
}

impl RemoteIter {
    pub(crate) fn new(source: RemoteObject) -> Self {
        RemoteIter {
            batches: Batches::new(source, ReturnMode::Ref),
            buffer: VecDeque::new(),
        }
    }

    /// The next item, `None` when the iteration is over.
    ///
    /// # Errors
    /// [`Error::Remote`] if Python raises while iterating (the iteration then ends), or any
    /// transport error.
    pub async fn next(&mut self) -> Option<Result<RemoteObject>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(Ok(item));
            }
            let items = match self.batches.fetch().await? {
                Ok(items) => items,
                Err(e) => return Some(Err(e)),
            };
            // Wrap at once, so items still buffered when `self` is dropped are released.
            for item in items {
                match RemoteObject::wrap(&self.batches.session, item) {
                    Ok(object) => self.buffer.push_back(object),
                    Err(e) => {
                        self.batches.finish();
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// Fetches every remaining item.
    ///
    /// # Errors
    /// The first error met; see [`next`](Self::next).
    pub async fn collect_all(mut self) -> Result<Vec<RemoteObject>> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }
}

/// Iterates a remote iterable; each item is copied and converted into `T`.
///
/// Made by [`RemoteObject::iter_as`]. Items are fetched in batches; `next` returns `None` at the
/// end, and an error ends the iteration (a conversion error only fails that item).
pub struct TypedIter<T> {
    batches: Batches,
    buffer: VecDeque<Value>,
    _item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedIter")
            .field("batches", &self.batches)
            .field("buffered", &self.buffer.len())
            .field("item", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: DeserializeOwned> TypedIter<T> {
    pub(crate) fn new(source: RemoteObject) -> Self {
        TypedIter {
            batches: Batches::new(source, ReturnMode::Value),
            buffer: VecDeque::new(),
            _item: PhantomData,
        }
    }

    /// The next item, `None` when the iteration is over.
    ///
    /// # Errors
    /// [`Error::Decode`] if an item does not fit `T`, [`Error::Remote`] if Python raises while
    /// iterating or an item cannot be copied (the iteration then ends), or any transport error.
    pub async fn next(&mut self) -> Option<Result<T>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(item.deserialize_into().map_err(Error::from));
            }
            match self.batches.fetch().await? {
                Ok(items) => self.buffer.extend(items),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Fetches and converts every remaining item.
    ///
    /// # Errors
    /// The first error met; see [`next`](Self::next).
    pub async fn collect_all(mut self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }
}
