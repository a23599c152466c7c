fn main() {
    std::process::exit(rectok::cli::run());
}
