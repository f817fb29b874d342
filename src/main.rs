//! The `layerfs` binary: everything lives in the library.

fn main() {
    let code = layerfs::cli::main(std::env::args_os().collect());
    std::process::exit(code);
}
