//! The commands, one file each: a clap struct whose `execute()` does the work.

mod call;
mod check;
mod client;
mod data;
mod fuzz;
mod id;
mod inspect;
mod keygen;
mod new;
mod peers;
mod run;
mod send;
mod services;
mod sessions;
mod token;
mod top;

pub use call::CallCommand;
pub use check::CheckCommand;
pub use data::DataCommand;
pub use fuzz::FuzzCommand;
pub use id::IdCommand;
pub use inspect::InspectCommand;
pub use keygen::KeygenCommand;
pub use new::NewCommand;
pub use peers::PeersCommand;
pub use run::RunCommand;
pub use send::SendCommand;
pub use services::ServicesCommand;
pub use sessions::SessionsCommand;
pub use token::TokenCommand;
pub use top::TopCommand;

use std::time::Duration;

/// A duration as the manifest writes one (`500ms`, `10s`), for flags.
fn parse_duration(s: &str) -> Result<Duration, String> {
    wasmwire::manifest::units::HumanDuration::try_from(s.to_string()).map(|d| d.0)
}
