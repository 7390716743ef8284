//! `copilot bench ingest`.

use copilot_runtime::Settings;

#[derive(clap::Args, Debug)]
pub struct IngestArgs {}

pub async fn ingest(_settings: Settings, _args: IngestArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
