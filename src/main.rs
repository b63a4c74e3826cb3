//! `ebg-notify` binary: everything lives in the library; see `ebg_notify::cli`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match ebg_notify::cli::run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ebg-notify: {}", ebg_notify::cli::render_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
