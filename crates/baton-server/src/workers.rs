//! `/api/workers/ws`: remote workers (DESIGN section 11), one WebSocket each, and
//! `GET /api/workers`.
//!
//! The first message is the worker's `hello`; the engine then hands it jobs as its
//! slots free and relays control, and the worker reports on the jobs it holds, each
//! report carrying the attempt's token. Reports are handed to their attempts in the
//! order they arrive and answered as they become durable, so a slow write holds no
//! other message back. A refused message gets an `error` naming what was wrong and
//! changes nothing. A worker that closes, sends nothing for three heartbeats, or
//! breaks the protocol's framing loses its attempts, which are recovered elsewhere.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use baton_api::{WorkerInfo, WorkerList};
use baton_engine::{Refused, Report, ToWorker, WorkerHello, WorkerSession};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use axum::Json;

/// The largest message a worker may send (a checkpoint or a result included).
pub const MAX_MESSAGE: usize = 1 << 20;
/// How often the server pings a worker by default; one silent for three of these is
/// gone ([`crate::ServerOptions::worker_heartbeat`]).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a new connection has to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

#[utoipa::path(get, operation_id = "list_workers", path = "/api/workers", tag = "meta",
    responses((status = 200, body = baton_api::WorkerList)))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<WorkerList>> {
    let workers = s
        .engine
        .workers()
        .into_iter()
        .map(|w| WorkerInfo {
            id: w.id,
            name: w.name,
            kinds: w.kinds,
            queues: w.queues,
            slots: w.slots,
            running: w.running,
            connected_at: w.connected_at,
        })
        .collect();
    Ok(Json(WorkerList { workers }))
}

pub async fn upgrade(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ws: WebSocketUpgrade,
) -> Response {
    // A worker receives jobs' payloads and writes their outcomes.
    if caller.role < Role::Operator {
        return ApiError::forbidden(format!(
            "the {} role may not serve jobs as a worker; it needs the operator role",
            caller.role.as_str()
        ))
        .into_response();
    }
    // The library's own limit is above ours, so that an oversize message is answered
    // with an error that says so rather than a dropped connection.
    ws.max_message_size(MAX_MESSAGE * 4)
        .max_frame_size(MAX_MESSAGE * 4)
        .on_upgrade(move |socket| session(s, caller, socket))
}

/// A message from a worker.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum FromWorker {
    Hello {
        #[serde(default)]
        name: Option<String>,
        kinds: Vec<String>,
        #[serde(default)]
        queues: Option<Vec<String>>,
        #[serde(default)]
        slots: Option<usize>,
    },
    Ready {
        slots: usize,
    },
    Heartbeat {},
    Progress {
        job: String,
        token: u64,
        #[serde(default)]
        fraction: Option<f64>,
        #[serde(default)]
        message: Option<String>,
    },
    Step {
        job: String,
        token: u64,
        name: String,
    },
    Output {
        job: String,
        token: u64,
        text: String,
    },
    Log {
        job: String,
        token: u64,
        text: String,
    },
    Checkpoint {
        job: String,
        token: u64,
        data: Value,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Complete {
        job: String,
        token: u64,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Fail {
        job: String,
        token: u64,
        error: Failure,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
}

#[derive(Deserialize)]
struct Failure {
    message: String,
    #[serde(default = "retryable_by_default")]
    retryable: bool,
    /// The worker's traceback, kept in the message.
    #[serde(default)]
    traceback: Option<String>,
}

fn retryable_by_default() -> bool {
    true
}

fn error(code: &str, message: impl Into<String>) -> Value {
    json!({"type": "error", "code": code, "message": message.into()})
}

fn refused(job: &str, r: &Refused) -> Value {
    json!({"type": "error", "code": r.code(), "message": r.to_string(), "job": job})
}

async fn send(socket: &mut WebSocket, msg: &Value) -> bool {
    socket
        .send(Message::Text(msg.to_string().into()))
        .await
        .is_ok()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        })))
        .await;
}

/// Reads one text message; `Err` with the reason to close when there is none.
fn text_of(msg: Option<Result<Message, axum::Error>>) -> Result<Option<String>, Value> {
    match msg {
        Some(Ok(Message::Text(t))) if t.len() > MAX_MESSAGE => Err(error(
            "too_large",
            format!(
                "a message of {} bytes is more than the {MAX_MESSAGE} bytes a worker may send",
                t.len()
            ),
        )),
        Some(Ok(Message::Text(t))) => Ok(Some(t.to_string())),
        Some(Ok(Message::Binary(_))) => Err(error(
            "bad_message",
            "binary messages are not part of the worker protocol: send JSON text",
        )),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(None),
        Some(Ok(Message::Close(_))) | None => Err(Value::Null),
        Some(Err(e)) => Err(error("bad_message", format!("unreadable message: {e}"))),
    }
}

fn parse(text: &str) -> Result<FromWorker, Value> {
    if let Some(duplicate) = crate::json::find_duplicate_key(text.as_bytes()) {
        return Err(error(
            "bad_message",
            format!("invalid message: {duplicate}"),
        ));
    }
    serde_json::from_str(text).map_err(|e| error("bad_message", format!("invalid message: {e}")))
}

async fn hello(socket: &mut WebSocket) -> Option<WorkerHello> {
    let first = match tokio::time::timeout(HELLO_WITHIN, socket.recv()).await {
        Ok(m) => m,
        Err(_) => {
            send(socket, &error("bad_message", "no hello within 10 s")).await;
            close(socket, 1008, "no hello").await;
            return None;
        }
    };
    let text = match text_of(first) {
        Ok(Some(t)) => t,
        Ok(None) => String::new(),
        Err(Value::Null) => return None,
        Err(e) => {
            send(socket, &e).await;
            close(socket, 1008, "protocol error").await;
            return None;
        }
    };
    match parse(&text) {
        Ok(FromWorker::Hello {
            name,
            kinds,
            queues,
            slots,
        }) => Some(WorkerHello {
            name: name.unwrap_or_else(|| "worker".into()),
            kinds,
            queues: queues.unwrap_or_else(|| vec!["default".into()]),
            slots: slots.unwrap_or(1),
        }),
        Ok(_) => {
            send(
                socket,
                &error("bad_message", "the first message must be a hello"),
            )
            .await;
            close(socket, 1008, "no hello").await;
            None
        }
        Err(e) => {
            send(socket, &e).await;
            close(socket, 1008, "protocol error").await;
            None
        }
    }
}

/// What a report's answer turns into: an `ack` (when one was asked for, and always
/// for a checkpoint) or an `error`.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Value>> + Send>>;

async fn session(s: AppState, caller: Caller, mut socket: WebSocket) {
    let Some(hello) = hello(&mut socket).await else {
        return;
    };
    // A token narrowed to some queues serves only those: a worker is handed its jobs'
    // payloads and writes their outcomes, which that token may not do to other queues.
    if let Some(Err(e)) = hello
        .queues
        .iter()
        .map(|q| caller.check_queue(q))
        .find(Result::is_err)
    {
        send(&mut socket, &error("invalid_hello", e.message)).await;
        close(&mut socket, 1008, "invalid hello").await;
        return;
    }
    let (worker, mut jobs) = match s.engine.connect_worker(hello) {
        Ok(pair) => pair,
        Err(e) => {
            let e = ApiError::from(e);
            send(&mut socket, &error("invalid_hello", e.message)).await;
            close(&mut socket, 1008, "invalid hello").await;
            return;
        }
    };
    let welcome = json!({
        "type": "welcome",
        "worker": worker.id(),
        "heartbeat": baton_core::duration::format(s.worker_heartbeat),
        "max_message": MAX_MESSAGE,
    });
    if !send(&mut socket, &welcome).await {
        return;
    }
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let heartbeat = s.worker_heartbeat;
    let mut ping = tokio::time::interval(heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            msg = socket.recv() => {
                last_heard = tokio::time::Instant::now();
                let text = match text_of(msg) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue,
                    Err(Value::Null) => break,
                    Err(e) => {
                        send(&mut socket, &e).await;
                        close(&mut socket, 1009, "protocol error").await;
                        break;
                    }
                };
                let reply = match parse(&text) {
                    Err(e) => Some(e),
                    Ok(m) => handle(&worker, m, &mut pending),
                };
                if let Some(reply) = reply
                    && !send(&mut socket, &reply).await
                {
                    break;
                }
            }
            Some(reply) = pending.next(), if !pending.is_empty() => {
                if let Some(reply) = reply
                    && !send(&mut socket, &reply).await
                {
                    break;
                }
            }
            out = jobs.recv() => {
                let Some(out) = out else { break };
                if !send(&mut socket, &to_json(out)).await {
                    break;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > heartbeat * 3 {
                    send(&mut socket, &error("heartbeat_missed",
                        "nothing heard from this worker for three heartbeats; its jobs are recovered")).await;
                    close(&mut socket, 1008, "heartbeat missed").await;
                    break;
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    // Dropping the session recovers the attempts the worker held.
    drop(worker);
}

/// Handles one parsed message: an immediate reply, or an answer to come in
/// `pending`.
fn handle(
    worker: &WorkerSession,
    m: FromWorker,
    pending: &mut FuturesUnordered<Pending>,
) -> Option<Value> {
    let (job, token, report, reference, ack) = match m {
        FromWorker::Hello { .. } => {
            return Some(error("bad_message", "hello was said already"));
        }
        FromWorker::Heartbeat {} => return None,
        FromWorker::Ready { slots } => {
            return worker
                .set_slots(slots)
                .err()
                .map(|e| error("bad_message", e.to_string()));
        }
        FromWorker::Progress {
            job,
            token,
            fraction,
            message,
        } => (
            job,
            token,
            Report::Progress { fraction, message },
            None,
            false,
        ),
        FromWorker::Step { job, token, name } => (job, token, Report::Step(name), None, false),
        FromWorker::Output { job, token, text } => (job, token, Report::Output(text), None, false),
        FromWorker::Log { job, token, text } => (job, token, Report::Log(text), None, false),
        FromWorker::Checkpoint {
            job,
            token,
            data,
            reference,
        } => (job, token, Report::Checkpoint(data), reference, true),
        FromWorker::Complete {
            job,
            token,
            result,
            reference,
        } => {
            let ack = reference.is_some();
            let report = Report::Complete(result.unwrap_or(Value::Null));
            (job, token, report, reference, ack)
        }
        FromWorker::Fail {
            job,
            token,
            error,
            reference,
        } => {
            let message = match error.traceback {
                Some(tb) if !tb.is_empty() => format!("{}\n{tb}", error.message),
                _ => error.message,
            };
            let ack = reference.is_some();
            let report = Report::Fail {
                message,
                retryable: error.retryable,
            };
            (job, token, report, reference, ack)
        }
    };
    match worker.report(&job, token, report) {
        Err(r) => Some(refused(&job, &r)),
        Ok(answer) => {
            pending.push(Box::pin(async move {
                match answer.await {
                    Ok(()) if ack => Some(json!({"type": "ack", "ref": reference, "job": job})),
                    Ok(()) => None,
                    Err(r) => Some(refused(&job, &r)),
                }
            }));
            None
        }
    }
}

fn to_json(out: ToWorker) -> Value {
    match out {
        ToWorker::Job {
            job,
            token,
            checkpoint,
            parents,
        } => json!({
            "type": "job",
            "job": job,
            "token": token,
            "checkpoint": checkpoint,
            "parents": parents,
        }),
        ToWorker::Control { job, action, force } => json!({
            "type": "control",
            "job": job,
            "action": action.as_str(),
            "force": force,
        }),
    }
}
