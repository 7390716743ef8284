//! Every service in one process on one port: gateway and API routes, health and metrics, the
//! projector, the correlator, the hypothesis service and the Slack notifier, sharing one NATS connection and one Postgres pool.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use copilot_runtime::{Context, Settings, auth::Jwt, http};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running system.
pub struct App {
    pub ctx: Context,
    pub jwt: Arc<Jwt>,
    pub addr: SocketAddr,
    http: JoinHandle<anyhow::Result<()>>,
    projector: Option<JoinHandle<anyhow::Result<()>>>,
    shutdown: CancellationToken,
}

/// Which services an `App` runs besides the HTTP routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    /// Gateway, API, projector, correlator, hypothesis service and Slack notifier: what
    /// `copilot up` runs.
    All,
    /// Gateway and API only, for benchmarks that time the projector on its own.
    HttpOnly,
}

impl App {
    /// Connects, migrates, provisions the streams and starts the services. The HTTP server
    /// binds `settings.http.listen` (port 0 picks a free one; `addr` tells which).
    pub async fn start(settings: Settings, services: Services) -> anyhow::Result<Self> {
        let jwt = Arc::new(Jwt::from_settings(&settings)?);
        let ctx = Context::connect(settings, "up").await?;
        prepare(&ctx).await?;
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(ctx.settings.http.listen)
            .await
            .with_context(|| {
                format!(
                    "binding {} (is another copilot running? set COPILOT_LISTEN)",
                    ctx.settings.http.listen
                )
            })?;
        let addr = listener.local_addr()?;
        let routes = copilot_gateway::router(ctx.clone())
            .merge(copilot_api::router(ctx.clone(), jwt.clone()))
            .merge(copilot_slack::router(ctx.clone()))
            .merge(http::health_routes(ctx.clone()))
            .merge(copilot_runtime::openapi::serve(&crate::schemas::openapi()));
        let http = tokio::spawn(http::serve_on(
            listener,
            http::finish_with(routes, ctx.settings.http.instrumentation),
            http::ServerTimeouts::from_settings(&ctx.settings),
            shutdown.clone(),
        ));
        // The tokens projection feeds the gateway's authentication and needs NATS alone: it
        // runs whatever else does.
        let tokens = tokio::spawn(copilot_runtime::tokens::serve(
            ctx.js.clone(),
            shutdown.clone(),
        ));
        let projector = Some({
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tokio::spawn(async move {
                let others = async {
                    if services == Services::All {
                        tokio::try_join!(
                            copilot_projector::serve(ctx.clone(), shutdown.clone()),
                            copilot_correlator::serve(ctx.clone(), shutdown.clone()),
                            copilot_hypothesis::serve(ctx.clone(), shutdown.clone()),
                            copilot_slack::notifier::serve(ctx, shutdown),
                        )
                        .map(|_| ())
                    } else {
                        Ok(())
                    }
                };
                let tokens = async { tokens.await.context("the tokens projection panicked")? };
                tokio::try_join!(others, tokens).map(|_| ())
            })
        });
        Ok(Self {
            ctx,
            jwt,
            addr,
            http,
            projector,
            shutdown,
        })
    }

    /// Base URL of the HTTP server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs until `stop` is cancelled or a service fails, then stops everything.
    pub async fn run_until(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Self {
            http,
            projector,
            shutdown,
            ..
        } = self;
        let projector = async {
            match projector {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            _ = stop.cancelled() => Ok(()),
            r = http => r.context("http server panicked").and_then(|r| r.context("http server failed")),
            r = projector => r.context("a background service panicked").and_then(|r| r.context("a background service failed")),
        };
        shutdown.cancel();
        result
    }

    /// Stops every service and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.http.await;
        if let Some(projector) = self.projector {
            let _ = projector.await;
        }
    }
}

/// Migrates the read models and applies the stream definitions: both idempotent, safe at every start.
pub async fn prepare(ctx: &Context) -> anyhow::Result<()> {
    ctx.store
        .migrate()
        .await
        .context("migrating the read models")?;
    copilot_runtime::nats::provision(&ctx.js)
        .await
        .context("provisioning JetStream streams")?;
    Ok(())
}
