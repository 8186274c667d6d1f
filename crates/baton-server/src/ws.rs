//! `/api/ws`: one socket to follow jobs (or everything) and to control them, with a
//! reply per command.

use std::collections::HashSet;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use baton_api::{ControlAction, ErrorDetail, WsMessage, WsRequest};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::events::{Feed, Filter, Next, Start};
use crate::limit::StreamPermit;

/// The largest message a client may send: commands are a few hundred bytes. Without a
/// bound of its own the library holds up to 64 MiB per socket, so a client with a
/// viewer's token could exhaust memory through a few hundred sockets.
const MAX_MESSAGE: usize = 64 * 1024;

pub async fn upgrade(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    permit: Option<Extension<StreamPermit>>,
    ws: WebSocketUpgrade,
) -> Response {
    // The session holds its stream permit (crate::limit) until the socket closes.
    let permit = permit.and_then(|Extension(p)| p.take());
    // The library's limit is above ours, so that a message a little over it is answered
    // with an error that says so; past the library's, the socket is closed.
    ws.max_message_size(MAX_MESSAGE * 4)
        .max_frame_size(MAX_MESSAGE * 4)
        .on_upgrade(move |socket| async move {
            session(s, caller, socket).await;
            drop(permit);
        })
}

/// What the socket follows.
#[derive(Default)]
struct Subscriptions {
    all: bool,
    jobs: HashSet<String>,
}

impl Subscriptions {
    fn any(&self) -> bool {
        self.all || !self.jobs.is_empty()
    }

    fn wants(&self, job: Option<&str>) -> bool {
        self.all || job.is_some_and(|j| self.jobs.contains(j))
    }
}

async fn session(s: AppState, caller: Caller, mut socket: WebSocket) {
    let mut subs = Subscriptions::default();
    let mut feed: Option<Feed> = None;
    loop {
        let event = async {
            match feed.as_mut() {
                Some(f) if subs.any() => f.next().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) if t.len() > MAX_MESSAGE => {
                        let error = ErrorDetail::new("too_large", format!(
                            "a message of {} bytes is more than the {MAX_MESSAGE} bytes this socket takes",
                            t.len()
                        ));
                        if send(&mut socket, &WsMessage::Error { error }).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let parsed = match crate::json::find_duplicate_key(text.as_bytes()) {
                    Some(duplicate) => Err(duplicate),
                    None => serde_json::from_str::<WsRequest>(&text).map_err(|e| e.to_string()),
                };
                let reply = match parsed {
                    Err(e) => WsMessage::Error {
                        error: ErrorDetail::new("bad_request", format!("invalid message: {e}")),
                    },
                    Ok(WsRequest::Subscribe { job, after }) => {
                        match &job {
                            Some(j) => { subs.jobs.insert(j.clone()); }
                            None => subs.all = true,
                        }
                        // A resume point (or the first subscription) starts a new feed.
                        let started = if after.is_some() || feed.is_none() {
                            let start = after.map_or(Start::Live, Start::After);
                            let filter = Filter { job: None, kinds: None };
                            Feed::new(s.clone(), start, filter).await.map(|f| feed = Some(f))
                        } else {
                            Ok(())
                        };
                        match started {
                            Ok(()) => WsMessage::Subscribed { job },
                            Err(e) => WsMessage::Error {
                                error: ErrorDetail::new(e.code, e.message),
                            },
                        }
                    }
                    Ok(WsRequest::Unsubscribe { job }) => {
                        match &job {
                            Some(j) => { subs.jobs.remove(j); }
                            None => { subs.all = false; subs.jobs.clear(); }
                        }
                        WsMessage::Unsubscribed { job }
                    }
                    Ok(WsRequest::Control { id, action, job, force, from_checkpoint }) => {
                        control(&s, &caller, id, action, &job, force, from_checkpoint).await
                    }
                };
                if send(&mut socket, &reply).await.is_err() {
                    return;
                }
            }
            f = event => {
                let f = match f {
                    None => return,
                    Some(Next::Frame(f)) => f,
                    // SSE comment lines keep idle streams open; a socket has none.
                    Some(Next::Idle) => continue,
                    Some(Next::Pruned { after, pruned_upto }) => {
                        if send(&mut socket, &WsMessage::Pruned { after, pruned_upto }).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                if subs.wants(f.job_id.as_deref()) {
                    // The event's JSON is shared by every stream; only the envelope is new.
                    let text = format!("{{\"type\":\"event\",\"event\":{}}}", f.json());
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn control(
    s: &AppState,
    caller: &Caller,
    id: Option<String>,
    action: ControlAction,
    job: &str,
    force: bool,
    from_checkpoint: bool,
) -> WsMessage {
    let needed = if action == ControlAction::Delete {
        Role::Admin
    } else {
        Role::Operator
    };
    let narrowed = match &caller.queues {
        None => Ok(()),
        Some(_) => match s.engine.get(job).await {
            Ok(j) => caller.check_queue(&j.queue),
            Err(e) => Err(ApiError::from(e)),
        },
    };
    let result: Result<baton_core::Job, ApiError> = if caller.role < needed {
        Err(ApiError::forbidden(format!(
            "the {} role may not {action:?} jobs; it needs the {} role",
            caller.role.as_str(),
            needed.as_str()
        )))
    } else if let Err(e) = narrowed {
        Err(e)
    } else {
        let e = &s.engine;
        let r = match action {
            ControlAction::Pause => e.pause(job).await,
            ControlAction::Resume => e.resume(job).await,
            ControlAction::Stop => e.stop(job, force).await,
            ControlAction::Cancel => e.cancel(job).await,
            ControlAction::Retry => e.retry(job, from_checkpoint).await,
            ControlAction::Delete => e.delete(job).await,
        };
        r.map_err(ApiError::from)
    };
    match result {
        Ok(job) => WsMessage::Reply {
            id,
            ok: true,
            job: Some(Box::new(job)),
            error: None,
        },
        Err(e) => WsMessage::Reply {
            id,
            ok: false,
            job: None,
            error: Some(ErrorDetail::new(e.code, e.message)),
        },
    }
}

async fn send(socket: &mut WebSocket, msg: &WsMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(msg).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
}
