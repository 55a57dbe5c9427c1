// mimalloc: tend allocates many small JSON values per pass; it is faster
// than the system allocator here and returns memory to the OS more eagerly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tend::cli::main()
}
