//! Command line: `serve` (default) and `config`, plus one flag per setting (flags override
//! the environment).

use clap::{Arg, ArgMatches, Command};

use crate::config::{MapSource, env};

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run the daemon.
    Serve,
    /// Print the effective configuration and exit.
    Config,
}

/// The parsed command line: the action and the settings given as flags.
#[derive(Debug)]
pub struct Cli {
    pub action: Action,
    pub flags: MapSource,
}

/// The clap command, one global flag per setting.
pub fn command() -> Command {
    let settings = env::ALL.iter().map(|s| {
        Arg::new(s.env)
            .long(s.flag)
            .value_name("VALUE")
            .help(format!("{} [env: {}]", s.help, s.env))
            .global(true)
            .help_heading("Settings (flags override the environment)")
    });
    Command::new("esb-agent")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Node agent of a self-hosted AWS-Lambda-compatible platform")
        .subcommand(Command::new("serve").about("Run the agent daemon (the default)"))
        .subcommand(
            Command::new("config")
                .about("Print the effective configuration (secrets redacted) and exit"),
        )
        .args(settings)
}

/// Reads the action and the flag values out of parsed matches.
pub fn from_matches(m: &ArgMatches) -> Cli {
    let (action, sub) = match m.subcommand() {
        Some(("config", sub)) => (Action::Config, Some(sub)),
        Some((_, sub)) => (Action::Serve, Some(sub)),
        None => (Action::Serve, None),
    };
    let mut flags = MapSource::default();
    for s in env::ALL {
        // Global args land in the subcommand's matches when given after it.
        let value = sub
            .and_then(|sm| sm.get_one::<String>(s.env))
            .or_else(|| m.get_one::<String>(s.env));
        if let Some(v) = value {
            flags.0.insert(s.env.to_string(), v.clone());
        }
    }
    Cli { action, flags }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        from_matches(&command().try_get_matches_from(args).unwrap())
    }

    #[test]
    fn default_is_serve() {
        let cli = parse(&["esb-agent"]);
        assert_eq!(cli.action, Action::Serve);
        assert!(cli.flags.0.is_empty());
    }

    #[test]
    fn flags_before_and_after_subcommand() {
        let cli = parse(&[
            "esb-agent",
            "--port",
            "6000",
            "config",
            "--runtime",
            "containerd",
        ]);
        assert_eq!(cli.action, Action::Config);
        assert_eq!(cli.flags.0["PORT"], "6000");
        assert_eq!(cli.flags.0["AGENT_RUNTIME"], "containerd");
        let cli = parse(&["esb-agent", "serve", "--env", "dev"]);
        assert_eq!(cli.action, Action::Serve);
        assert_eq!(cli.flags.0["ENV"], "dev");
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert!(
            command()
                .try_get_matches_from(["esb-agent", "--nope"])
                .is_err()
        );
        command().debug_assert();
    }
}
