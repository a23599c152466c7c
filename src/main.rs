// Tensor code allocates and frees multi-megabyte buffers at every op; mimalloc keeps them mapped
// instead of returning them to the kernel, which saves a page fault per 4 KiB on each reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(rectok::cli::run());
}
