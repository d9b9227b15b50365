//! `wasp completions bash|zsh|fish`: a completion script on stdout.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// `wasp completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell. Install e.g. with `wasp completions bash >
    /// /etc/bash_completion.d/wasp`, `wasp completions zsh >
    /// "${fpath[1]}/_wasp"`, `wasp completions fish >
    /// ~/.config/fish/completions/wasp.fish`.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// Shells wasp writes completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// Runs `wasp completions`.
pub fn run(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let shell = match a.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut super::Cli::command(), "wasp", &mut buf);
    super::write_stdout(&buf)?;
    Ok(ExitCode::SUCCESS)
}
