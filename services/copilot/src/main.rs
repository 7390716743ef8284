use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    copilot::cli::main(copilot::cli::Cli::parse()).await
}
