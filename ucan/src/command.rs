//! Commands: slash-separated paths (`/`, `/msg`, `/msg/send`), parsed once.

/// `command_bytes_max`: the longest command accepted.
pub const COMMAND_BYTES_MAX: usize = 1024;

/// A command, checked: it starts with `/`, has no empty segment, ends with
/// no `/` (unless it is `/`, which covers every command) and is lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Command(String);

/// What is wrong with a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command {0:?} does not start with /")]
    NotAbsolute(String),
    #[error("command {0:?} has an empty segment or a trailing /")]
    EmptySegment(String),
    #[error("command {0:?} is not lowercase")]
    NotLowercase(String),
    #[error("a command longer than command_bytes_max ({COMMAND_BYTES_MAX})")]
    TooLong,
}

impl Command {
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        if text.len() > COMMAND_BYTES_MAX {
            return Err(CommandError::TooLong);
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(CommandError::NotAbsolute(text.to_owned()));
        };
        if !rest.is_empty() && rest.split('/').any(str::is_empty) {
            return Err(CommandError::EmptySegment(text.to_owned()));
        }
        if text.chars().any(char::is_uppercase) {
            return Err(CommandError::NotLowercase(text.to_owned()));
        }
        Ok(Command(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this command, delegated, covers `wanted`: it is `/`, the same
    /// command, or a prefix of it ending at a segment boundary (`/crypto`
    /// covers `/crypto/sign`, not `/cryptocurrency`).
    pub fn covers(&self, wanted: &Command) -> bool {
        self.0 == "/"
            || wanted.0 == self.0
            || wanted
                .0
                .strip_prefix(&self.0)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(text: &str) -> Command {
        Command::parse(text).unwrap()
    }

    #[test]
    fn a_command_covers_by_whole_segments() {
        assert!(command("/").covers(&command("/anything/at/all")));
        assert!(command("/crypto").covers(&command("/crypto")));
        assert!(command("/crypto").covers(&command("/crypto/sign")));
        assert!(!command("/crypto").covers(&command("/cryptocurrency")));
        assert!(!command("/crypto/sign").covers(&command("/crypto")));
    }

    #[test]
    fn malformed_commands_are_refused() {
        for bad in ["", "msg", "/msg/", "//", "/msg//send", "/Msg"] {
            assert!(Command::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
