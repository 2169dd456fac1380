//! Side-by-side comparison on this machine (filled in below).

use crate::Error;

#[derive(Debug, Clone, clap::Args)]
pub struct CompareOptions {
    #[arg(long)]
    pub smoke: bool,
}

pub async fn compare(_opts: CompareOptions, _invocation: String) -> Result<(), Error> {
    Err(Error::Usage("compare: not yet".into()))
}
