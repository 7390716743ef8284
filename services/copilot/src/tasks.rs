//! `copilot tasks list|show|logs|cancel`: tasks for operators, from the read models, and cancel
//! through the same command as `DELETE /v1/tasks/{id}` (actor `system:cli`).

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use copilot_projector::{Projection, catch_up};
use copilot_runtime::Settings;
use copilot_store::TaskFilter;
use uuid::Uuid;

use crate::admin::{ACTOR, connect, ensure_tenant, headers};

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// A tenant's tasks, newest first
    List {
        #[arg(long)]
        tenant: String,
        /// queued, running, succeeded, failed or cancelled
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        incident: Option<Uuid>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One task as JSON: status, attempts, every failure's reason, result
    Show {
        #[arg(long)]
        tenant: String,
        id: Uuid,
    },
    /// A task's log lines; with --follow, new lines as they come until the task ends
    Logs {
        #[arg(long)]
        tenant: String,
        id: Uuid,
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a queued or running task (a running attempt stops at its next heartbeat)
    Cancel {
        #[arg(long)]
        tenant: String,
        id: Uuid,
    },
}

pub async fn run(settings: Settings, command: TasksCommand) -> anyhow::Result<()> {
    let ctx = connect(settings).await?;
    let store = &ctx.store;
    match command {
        TasksCommand::List {
            tenant,
            status,
            kind,
            incident,
            limit,
        } => {
            ensure_tenant(&ctx, &tenant).await?;
            let filter = TaskFilter {
                status,
                kind,
                incident_id: incident,
                ..TaskFilter::default()
            };
            let mut tx = store.begin_tenant(&tenant).await?;
            let tasks = store
                .list_tasks(&mut tx, &tenant, &filter, None, limit)
                .await?;
            for t in tasks {
                println!(
                    "{} {:<10} {:<20} p{} attempt {}/{} {}",
                    t.task_id,
                    t.status,
                    t.kind,
                    t.priority,
                    t.attempt,
                    t.max_attempts,
                    t.created_at.format("%Y-%m-%dT%H:%M:%SZ")
                );
            }
        }
        TasksCommand::Show { tenant, id } => {
            ensure_tenant(&ctx, &tenant).await?;
            let task = store
                .get_task(&mut store.begin_tenant(&tenant).await?, &tenant, id)
                .await?
                .with_context(|| format!("tenant {tenant} has no task {id}"))?;
            let view = copilot_api::tasks::TaskView::from(task);
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        TasksCommand::Logs { tenant, id, follow } => {
            ensure_tenant(&ctx, &tenant).await?;
            let mut after = (0_i64, -1_i32);
            loop {
                let mut tx = store.begin_tenant(&tenant).await?;
                let task = store
                    .get_task(&mut tx, &tenant, id)
                    .await?
                    .with_context(|| format!("tenant {tenant} has no task {id}"))?;
                let lines = store.task_log(&mut tx, &tenant, id, after, 500).await?;
                for l in &lines {
                    println!(
                        "{} [attempt {}] {}",
                        l.at.format("%H:%M:%S%.3f"),
                        l.attempt,
                        l.line
                    );
                    after = (l.seq, l.line_no);
                }
                let ended = matches!(task.status.as_str(), "succeeded" | "failed" | "cancelled");
                // A full page means there may be more: read on, followed or not.
                if lines.len() < 500 && (!follow || ended) {
                    if follow {
                        eprintln!("task {}", task.status);
                    }
                    return Ok(());
                }
                if lines.is_empty() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        TasksCommand::Cancel { tenant, id } => {
            ensure_tenant(&ctx, &tenant).await?;
            let task =
                copilot_commands::cancel_task(&ctx.js, &tenant, id, ACTOR, headers()).await?;
            catch_up(&ctx, Projection::Tasks, Duration::from_secs(30))
                .await
                .context("waiting for the cancel to be projected")?;
            println!("task {id} is {}", task.status.as_str());
        }
    }
    Ok(())
}
