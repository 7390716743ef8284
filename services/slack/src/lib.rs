//! The copilot in Slack: `/copilot` slash commands and the buttons of its incident messages.
//!
//! This crate owns one surface and nothing else. A request is Slack's or it is refused: its
//! workspace (`team_id`, or the Enterprise Grid's `enterprise_id`) picks the tenant whose Slack
//! settings name it, and its signature is checked with that tenant's signing secret before
//! anything in it is acted on. The Slack user then acts as the tenant user linked to them
//! (`slack_user_id`), with that user's role, and every action runs the same command as the API
//! (the commands crate), with actor `slack:<team>/<user>`: the same events, the same audit rows.
//! Answers follow Slack's rules: within three seconds, ephemeral unless the result is for the
//! channel, and a button's message is replaced in place through the request's `response_url`,
//! which must lie under the operator's configured Slack prefix.

pub mod blocks;
pub mod notifier;
pub mod verify;
pub mod webapi;

use std::time::Duration;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;
use copilot_commands::{CommandError, IncidentAction, IncidentCommand, run_incident_command};
use copilot_events::{Headers, Role, TenantIntegrations, Verdict};
use copilot_runtime::Context;
use copilot_store::IncidentSummary;
use serde_json::{Value, json};
use uuid::Uuid;

/// The Slack routes, to merge into the server's router.
pub fn router(ctx: Context) -> Router {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain HTTP client builds");
    let routes = Router::new()
        .route("/v1/slack/commands", post(commands))
        .route("/v1/slack/interactions", post(interactions))
        .with_state(Slack { ctx, http });
    copilot_runtime::http::service_routes("slack", routes)
}

#[derive(Clone)]
struct Slack {
    ctx: Context,
    http: reqwest::Client,
}

/// A request that proved to be Slack's, for a tenant.
struct Verified {
    tenant: String,
    team: String,
    /// The workspace's signing secret, which also signs `/copilot link` codes.
    secret: String,
    request_id: Option<String>,
}

/// Refused: one answer whatever the reason, so a prober learns nothing (the reason is logged).
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "this request is not signed by a Slack workspace this copilot knows",
    )
        .into_response()
}

/// An answer only the asker sees.
fn ephemeral(text: impl Into<String>) -> Value {
    json!({"response_type": "ephemeral", "text": text.into()})
}

impl Slack {
    /// Finds the tenant of the workspace and verifies the signature with its signing secret.
    async fn verify(&self, headers: &HeaderMap, body: &[u8], teams: &[&str]) -> Option<Verified> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signed = verify::Signed {
            timestamp: header("x-slack-request-timestamp"),
            signature: header("x-slack-signature"),
        };
        // Cheap refusals first: no lookup for a request without headers or with a stale clock.
        if let Err(refused) = verify::fresh(&signed, chrono::Utc::now().timestamp()) {
            tracing::info!(%refused, "slack request refused");
            return None;
        }
        let teams: Vec<&str> = teams.iter().copied().filter(|t| !t.is_empty()).collect();
        let (tenant, integrations) = match self.ctx.store.tenant_by_slack_team(&teams).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                tracing::info!(teams = ?teams, "slack request from a workspace no tenant names");
                return None;
            }
            Err(error) => {
                tracing::warn!(%error, "looking up a slack workspace failed");
                return None;
            }
        };
        let slack = serde_json::from_value::<TenantIntegrations>(integrations)
            .ok()
            .and_then(|i| i.slack)?;
        let secret = copilot_commands::slack_link::signing_secret(&self.ctx, &tenant, &slack).await;
        let secret = match secret {
            Ok(secret) => secret,
            Err(error) => {
                tracing::warn!(
                    tenant,
                    error,
                    "a tenant's slack signing secret cannot be used"
                );
                return None;
            }
        };
        if let Err(refused) = verify::verify(
            secret.as_bytes(),
            &signed,
            body,
            chrono::Utc::now().timestamp(),
        ) {
            tracing::info!(tenant, %refused, "slack request refused");
            return None;
        }
        Some(Verified {
            tenant,
            team: slack.team_id,
            secret,
            request_id: header("x-request-id").map(str::to_owned),
        })
    }

    /// The tenant user a Slack account is linked to, and their role.
    async fn person(
        &self,
        tenant: &str,
        slack_user: &str,
    ) -> Result<Option<(String, Role)>, CommandError> {
        let mut tx = self.ctx.store.begin_tenant(tenant).await?;
        let user = self
            .ctx
            .store
            .user_by_slack_id(&mut tx, tenant, slack_user)
            .await?;
        Ok(user.and_then(|u| Some((u.user_id, u.role.parse().ok()?))))
    }

    /// The incident a short id (at least 4 characters of its UUID, as messages show) names.
    async fn incident(&self, tenant: &str, short: &str) -> Result<IncidentSummary, String> {
        let short = short.trim().to_ascii_lowercase();
        if short.len() < 4 || !short.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(format!(
                "{short:?} is not an incident id: give at least its first 4 characters, as messages show them"
            ));
        }
        let store = &self.ctx.store;
        let found = async {
            let mut tx = store.begin_tenant(tenant).await?;
            let ids = store
                .incident_ids_by_prefix(&mut tx, tenant, &short)
                .await?;
            let incident = match ids.as_slice() {
                [id] => store.get_incident(&mut tx, tenant, *id).await?,
                _ => None,
            };
            Ok::<_, copilot_store::StoreError>((ids.len(), incident))
        };
        match found.await {
            Ok((_, Some(incident))) => Ok(incident),
            Ok((0 | 1, None)) => Err(format!("no incident has an id starting with {short}")),
            Ok(_) => Err(format!(
                "more than one incident has an id starting with {short}: give more of it"
            )),
            Err(error) => {
                tracing::warn!(%error, tenant, "reading an incident for slack failed");
                Err("the incident could not be read just now; try again".into())
            }
        }
    }

    /// Runs an incident command as the linked user and waits (briefly) until the read model
    /// shows it, so the answer shows the incident as it now is.
    async fn act(
        &self,
        who: &Verified,
        slack_user: &str,
        incident: Uuid,
        action: IncidentAction,
    ) -> Result<IncidentSummary, String> {
        let actor = format!("slack:{}/{}", who.team, slack_user);
        let command = IncidentCommand {
            tenant: &who.tenant,
            incident_id: incident,
            actor: &actor,
            headers: Headers {
                actor: Some(actor.clone()),
                request_id: who.request_id.clone(),
                ..Headers::default()
            },
            pinned: None,
        };
        let appended = run_incident_command(&self.ctx.js, &self.ctx.store, command, action)
            .await
            .map_err(|e| match e {
                CommandError::Store(_) | CommandError::Append(_) | CommandError::Internal(_) => {
                    tracing::warn!(error = %e, tenant = who.tenant, "a slack command failed");
                    "the copilot could not do that just now; try again".to_owned()
                }
                other => other.to_string(),
            })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let current = async {
                let mut tx = self.ctx.store.begin_tenant(&who.tenant).await?;
                self.ctx
                    .store
                    .get_incident(&mut tx, &who.tenant, incident)
                    .await
            };
            match current.await {
                Ok(Some(i))
                    if i.version as u64 >= appended.version
                        || tokio::time::Instant::now() >= deadline =>
                {
                    return Ok(i);
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return Err("done, but the incident could not be read back".into()),
            }
        }
    }

    /// The incident's message: its summary, its current hypotheses and the buttons.
    async fn message(&self, tenant: &str, incident: &IncidentSummary) -> Value {
        let hypotheses = hypotheses(&self.ctx, tenant, incident.id).await.ok();
        blocks::incident(incident, &hypotheses.unwrap_or_default())
    }

    /// Sends `message` to a request's `response_url`, if it lies under the configured prefix.
    fn respond_later(&self, response_url: &str, message: Value) {
        let prefix = &self.ctx.settings.slack.slack_response_url_prefix;
        if !response_url.starts_with(prefix.as_str()) {
            tracing::warn!(
                prefix = prefix.as_str(),
                "a slack response_url outside the configured prefix was not called"
            );
            return;
        }
        let (http, url) = (self.http.clone(), response_url.to_owned());
        tokio::spawn(async move {
            match http.post(&url).json(&message).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(
                    status = r.status().as_u16(),
                    "slack refused a response_url answer"
                ),
                Err(error) => {
                    tracing::warn!(%error, "answering through a slack response_url failed")
                }
            }
        });
    }
}

/// The incident's current hypotheses (its latest proposal's).
async fn hypotheses(
    ctx: &Context,
    tenant: &str,
    incident: Uuid,
) -> Result<Vec<copilot_store::HypothesisView>, copilot_store::StoreError> {
    let mut tx = ctx.store.begin_tenant(tenant).await?;
    Ok(ctx
        .store
        .incident_proposals(&mut tx, tenant, incident, false)
        .await?
        .into_iter()
        .next()
        .map(|p| p.hypotheses)
        .unwrap_or_default())
}

/// An incident's message as the read model has it now (`None`: no such incident).
async fn incident_message(
    ctx: &Context,
    tenant: &str,
    incident: Uuid,
) -> Result<Option<Value>, copilot_store::StoreError> {
    let summary = {
        let mut tx = ctx.store.begin_tenant(tenant).await?;
        ctx.store.get_incident(&mut tx, tenant, incident).await?
    };
    let Some(summary) = summary else {
        return Ok(None);
    };
    let hypotheses = hypotheses(ctx, tenant, incident).await?;
    Ok(Some(blocks::incident(&summary, &hypotheses)))
}

/// The fields of a form body.
fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

const HELP: &str = "*/copilot* commands:\n\
• `help`: this list\n\
• `incidents [open|all]`: the newest incidents\n\
• `incident <id>`: one incident, with its hypotheses and buttons, posted to the channel\n\
• `ack <id>`, `investigate <id>`, `resolve <id> [note]`: move it along its lifecycle\n\
• `assign <id> <@user|me>`: assign it\n\
• `note <id> <text>`: add a note\n\
• `ask <question>`: ask the copilot\n\
• `link`: link your Slack account to your copilot user\n\
Ids are the first characters shown in messages (at least 4).";

async fn commands(State(slack): State<Slack>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form(&body);
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    let Some(who) = slack
        .verify(&headers, &body, &[field("team_id"), field("enterprise_id")])
        .await
    else {
        return unauthorized();
    };
    let slack_user = field("user_id");
    let person = match slack.person(&who.tenant, slack_user).await {
        Ok(person) => person,
        Err(error) => {
            tracing::warn!(%error, "reading a slack user's link failed");
            return Json(ephemeral(
                "the copilot could not read your account just now; try again",
            ))
            .into_response();
        }
    };
    let text = field("text").trim().to_owned();
    let (verb, rest) = text
        .split_once(char::is_whitespace)
        .unwrap_or((text.as_str(), ""));
    let rest = rest.trim();
    if verb == "link" {
        return Json(link(
            &who,
            slack_user,
            person.as_ref().map(|p| p.0.as_str()),
        ))
        .into_response();
    }
    let Some((user, role)) = person else {
        return Json(ephemeral(format!(
            "Your Slack account ({slack_user}) is not linked to a user of this copilot's tenant {:?}. \
             Run `/copilot link` for a one-time code to confirm as yourself, or ask an admin to \
             link it: `PATCH /v1/admin/tenants/{}/users/<your user id>` with \
             `{{\"slack_user_id\": \"{slack_user}\"}}`.",
            who.tenant, who.tenant
        )))
        .into_response();
    };
    let answer = match verb {
        "" | "help" => ephemeral(HELP),
        "incidents" => list(&slack, &who.tenant, rest == "all").await,
        "incident" => match slack.incident(&who.tenant, rest).await {
            Ok(incident) => {
                let mut message = slack.message(&who.tenant, &incident).await;
                message["response_type"] = json!("in_channel");
                message
            }
            Err(why) => ephemeral(why),
        },
        "ack" | "investigate" | "resolve" | "assign" | "note" => {
            if role < Role::Engineer {
                ephemeral(format!(
                    "`{verb}` needs the engineer role; you are a {}",
                    role.as_str()
                ))
            } else {
                let (id, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let arg = arg.trim();
                match slack.incident(&who.tenant, id).await {
                    Err(why) => ephemeral(why),
                    Ok(incident) => match action(&slack, &who.tenant, verb, arg, &user).await {
                        Err(why) => ephemeral(why),
                        Ok(action) => {
                            match slack.act(&who, slack_user, incident.id, action).await {
                                Err(why) => ephemeral(format!(
                                    "`{verb}` on {}: {why}",
                                    blocks::short(incident.id)
                                )),
                                Ok(now) => {
                                    let mut message = slack.message(&who.tenant, &now).await;
                                    message["response_type"] = json!("in_channel");
                                    message
                                }
                            }
                        }
                    },
                }
            }
        }
        "ask" => ask(rest),
        other => ephemeral(format!("unknown command `{other}`.\n{HELP}")),
    };
    Json(answer).into_response()
}

/// `/copilot link`: a one-time code the Slack user (signed in as their tenant user) or an admin
/// confirms with `POST /v1/slack/link`.
fn link(who: &Verified, slack_user: &str, linked_to: Option<&str>) -> Value {
    if let Some(user) = linked_to {
        return ephemeral(format!(
            "Your Slack account is already linked to user `{user}`."
        ));
    }
    let code = copilot_commands::slack_link::link_code(
        &who.secret,
        &who.tenant,
        &who.team,
        slack_user,
        chrono::Utc::now().timestamp(),
    );
    ephemeral(format!(
        "Your one-time link code (valid {} minutes): `{code}`\n\
         Confirm it as yourself with your copilot token: `POST /v1/slack/link` with \
         `{{\"code\": \"{code}\"}}`, or give it to an admin, who sends \
         `{{\"code\": \"{code}\", \"user_id\": \"<your user id>\"}}`.",
        copilot_commands::slack_link::LINK_CODE_SECS / 60
    ))
}

/// `/copilot ask`: questions with cited answers arrive with the question service.
pub fn ask(question: &str) -> Value {
    if question.is_empty() {
        return ephemeral("ask what? `/copilot ask has checkout failed like this before?`");
    }
    ephemeral(
        "Asking questions is not available on this copilot yet: it arrives with the question service. Until then, `/copilot incident <id>` shows an incident's cited hypotheses.",
    )
}

/// The lifecycle state a slash command's verb or a button's action moves an incident to.
fn lifecycle_move(verb: &str) -> Option<&'static str> {
    match verb {
        "ack" => Some("acknowledged"),
        "investigate" => Some("investigating"),
        "resolve" => Some("resolved"),
        _ => None,
    }
}

/// The command a verb and its argument ask for, `user` being the asker's linked user.
async fn action(
    slack: &Slack,
    tenant: &str,
    verb: &str,
    arg: &str,
    user: &str,
) -> Result<IncidentAction, String> {
    if let Some(to) = lifecycle_move(verb) {
        return Ok(IncidentAction::Transition {
            to: to.into(),
            note: (!arg.is_empty()).then(|| arg.to_owned()),
        });
    }
    Ok(match verb {
        "note" if arg.is_empty() => return Err("`note <id> <text>`: the text is missing".into()),
        "note" => IncidentAction::Note {
            text: arg.to_owned(),
        },
        "assign" if arg == "me" => IncidentAction::Assign {
            assignee: Some(user.to_owned()),
        },
        "assign" => {
            // Slack writes a mention as `<@U123|name>` (or `<@U123>`).
            let target = arg
                .strip_prefix("<@")
                .and_then(|m| m.strip_suffix('>'))
                .map(|m| m.split('|').next().unwrap_or(m).to_owned())
                .ok_or("`assign <id> <@user|me>`: mention the person to assign")?;
            let assignee = slack
                .person(tenant, &target)
                .await
                .map_err(|_| {
                    "the copilot could not read that account just now; try again".to_owned()
                })?
                .ok_or_else(|| format!("<@{target}> is not linked to a user of this tenant"))?
                .0;
            IncidentAction::Assign {
                assignee: Some(assignee),
            }
        }
        other => unreachable!("no action for {other}"),
    })
}

async fn list(slack: &Slack, tenant: &str, all: bool) -> Value {
    let filter = copilot_store::IncidentFilter {
        open: (!all).then_some(true),
        ..Default::default()
    };
    let incidents = async {
        let mut tx = slack.ctx.store.begin_tenant(tenant).await?;
        slack
            .ctx
            .store
            .list_incidents(
                &mut tx,
                tenant,
                &filter,
                copilot_store::IncidentSort::Newest,
                None,
                10,
            )
            .await
    };
    match incidents.await {
        Ok(incidents) => ephemeral(blocks::list(&incidents, all)),
        Err(error) => {
            tracing::warn!(%error, tenant, "listing incidents for slack failed");
            ephemeral("the incidents could not be read just now; try again")
        }
    }
}

/// A button: the same commands as the slash commands, then the message replaced in place.
async fn interactions(State(slack): State<Slack>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form(&body);
    let payload: Value = fields
        .get("payload")
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or(Value::Null);
    let team = payload["team"]["id"]
        .as_str()
        .or(payload["user"]["team_id"].as_str())
        .unwrap_or("");
    let enterprise = payload["enterprise"]["id"].as_str().unwrap_or("");
    let Some(who) = slack.verify(&headers, &body, &[team, enterprise]).await else {
        return unauthorized();
    };
    let slack_user = payload["user"]["id"].as_str().unwrap_or("").to_owned();
    let response_url = payload["response_url"].as_str().unwrap_or("").to_owned();
    let Some(clicked) = payload["actions"].get(0) else {
        return StatusCode::OK.into_response();
    };
    let action_id = clicked["action_id"].as_str().unwrap_or("");
    let value = clicked["value"].as_str().unwrap_or("");
    let answer = match click(&slack, &who, &slack_user, action_id, value).await {
        Ok(message) => {
            let mut message = message;
            message["replace_original"] = json!(true);
            message
        }
        Err(why) => {
            let mut message = ephemeral(why);
            message["replace_original"] = json!(false);
            message
        }
    };
    slack.respond_later(&response_url, answer);
    StatusCode::OK.into_response()
}

/// Runs what a button asks and answers the incident's new message, or why not.
async fn click(
    slack: &Slack,
    who: &Verified,
    slack_user: &str,
    action_id: &str,
    value: &str,
) -> Result<Value, String> {
    let Some((user, role)) = slack
        .person(&who.tenant, slack_user)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err(format!(
            "Your Slack account ({slack_user}) is not linked to a user of this tenant: ask an admin to set your slack_user_id."
        ));
    };
    if role < Role::Engineer {
        return Err(format!(
            "this button needs the engineer role; you are a {}",
            role.as_str()
        ));
    }
    let (incident, hypothesis) = value.split_once('|').unwrap_or((value, ""));
    let incident: Uuid = incident
        .parse()
        .map_err(|_| "this button names no incident".to_owned())?;
    let kind = action_id.split(':').next().unwrap_or("");
    let action = match lifecycle_move(kind) {
        Some(to) => IncidentAction::Transition {
            to: to.into(),
            note: None,
        },
        None => match kind {
            "assign_me" => IncidentAction::Assign {
                assignee: Some(user),
            },
            "confirm" | "refute" => IncidentAction::Verdict {
                hypothesis_id: hypothesis.to_owned(),
                verdict: if kind == "confirm" {
                    Verdict::Confirmed
                } else {
                    Verdict::Refuted
                },
                note: None,
            },
            other => return Err(format!("this copilot has no button {other:?}")),
        },
    };
    let now = slack.act(who, slack_user, incident, action).await?;
    Ok(slack.message(&who.tenant, &now).await)
}

/// Runs the Slack routes (with health routes) on the configured listen address, and the
/// notifier.
pub async fn run(
    settings: copilot_runtime::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Context::connect(settings, "slack").await?;
    let timeouts = copilot_runtime::http::ServerTimeouts::from_settings(&ctx.settings);
    let app = copilot_runtime::http::finish(
        router(ctx.clone()).merge(copilot_runtime::http::health_routes(ctx.clone())),
    );
    tokio::try_join!(
        copilot_runtime::http::serve(ctx.settings.http.listen, app, timeouts, shutdown.clone()),
        notifier::serve(ctx.clone(), shutdown),
    )?;
    Ok(())
}

/// The Slack app manifest to paste at "Create an app → From a manifest": the `/copilot` slash
/// command and interactivity pointing at `public_url`, and the bot scopes the copilot uses.
pub fn manifest(tenant: &str, public_url: &str) -> Value {
    let base = public_url.trim_end_matches('/');
    json!({
        "display_information": {
            "name": clip_name(&format!("Incident Copilot ({tenant})")),
            "description": "Incidents, root-cause hypotheses with cited evidence, and the buttons to work them",
        },
        "features": {
            "bot_user": {"display_name": "copilot", "always_online": true},
            "slash_commands": [{
                "command": "/copilot",
                "url": format!("{base}/v1/slack/commands"),
                "description": "Incidents, hypotheses and questions",
                "usage_hint": "help | incidents | incident <id> | ack <id> | resolve <id> [note]",
                "should_escape": false,
            }],
        },
        "oauth_config": {"scopes": {"bot": ["commands", "chat:write", "chat:write.public"]}},
        "settings": {
            "interactivity": {"is_enabled": true, "request_url": format!("{base}/v1/slack/interactions")},
            "org_deploy_enabled": false,
            "socket_mode_enabled": false,
            "token_rotation_enabled": false,
        },
    })
}

/// Slack app names are at most 35 characters.
fn clip_name(name: &str) -> String {
    name.chars().take(35).collect()
}
