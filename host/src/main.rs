fn main() -> std::process::ExitCode {
    switchyard::cli::run()
}
