//! keel's entry point: parse the command line, run, map the outcome to an exit code.
#![forbid(unsafe_code)]

fn main() {
    let code = keel::cli::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
