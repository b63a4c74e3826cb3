//! `ebg-notify` binary: everything lives in the library; see `ebg_notify::cli`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match ebg_notify::cli::run().await {
        Ok(code) => code,
        Err(e) => {
            // One line per cause, so a config error reads as a list of what to fix.
            eprintln!("ebg-notify: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
