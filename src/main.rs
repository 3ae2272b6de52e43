fn main() -> std::process::ExitCode {
    sweeper::shell::cli::main()
}
