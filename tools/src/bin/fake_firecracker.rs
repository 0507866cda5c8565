//! `fake-firecracker`: Firecracker's command line and API without a guest kernel; see
//! [`banger_tools::fake_firecracker`] for what it models and its fault knobs.

fn main() -> std::process::ExitCode {
    banger_tools::fake_firecracker::main()
}
