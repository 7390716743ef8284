use clap::Parser as _;

/// mimalloc: the ingest path allocates many small, short-lived strings and maps (serde_json),
/// where glibc's malloc spent a fifth of the projector's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    copilot::cli::main(copilot::cli::Cli::parse()).await
}
