//! A real HTTP server speaking the OpenAI chat-completions protocol, for tests of the model
//! engine: it answers what the test scripts (an answer, an HTTP error, silence) and keeps every
//! request it received.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde_json::{Value, json};

/// What the server does with the next requests.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this text as the assistant message's content.
    Content(String),
    /// This status with an OpenAI-style error body.
    Status(u16),
    /// Waits this long before answering (to trip the client's timeout).
    Stall(Duration),
}

#[derive(Clone)]
struct Shared {
    reply: Arc<Mutex<Reply>>,
    requests: Arc<Mutex<Vec<Value>>>,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start(reply: Reply) -> Self {
        let shared = Shared {
            reply: Arc::new(Mutex::new(reply)),
            requests: Arc::default(),
            authorizations: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self { addr, shared, task }
    }

    /// The base URL to configure (`…/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The `Authorization` header of every request received so far.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.authorizations.lock().unwrap().clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn complete(
    State(shared): State<Shared>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    shared.requests.lock().unwrap().push(body.clone());
    shared.authorizations.lock().unwrap().push(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    let reply = shared.reply.lock().unwrap().clone();
    match reply {
        Reply::Content(content) => (
            StatusCode::OK,
            Json(json!({
                "id": "chatcmpl-test", "object": "chat.completion", "created": 1_790_000_000u32,
                "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 812, "completion_tokens": 164, "total_tokens": 976}
            })),
        ),
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            Json(
                json!({"error": {"message": "scripted failure", "type": "server_error", "param": null, "code": null}}),
            ),
        ),
        Reply::Stall(wait) => {
            tokio::time::sleep(wait).await;
            (StatusCode::OK, Json(json!({})))
        }
    }
}
