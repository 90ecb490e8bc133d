//! `tern passwd`: manage the broker's password file (salted PBKDF2-SHA512 hashes).
//!
//! ```sh
//! tern passwd add passwords.txt alice            # reads the password from stdin
//! tern passwd update passwords.txt alice --password 's3cret'
//! tern passwd delete passwords.txt alice
//! ```
//! The file is rewritten atomically with mode 0600. A running broker reads it
//! again on SIGHUP.

use std::io::BufRead;
use std::path::PathBuf;

use tern_broker::security::password::{PasswordError, PasswordFile, DEFAULT_ITERATIONS, MIN_ITERATIONS};

/// Options of `tern passwd`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Add a user (the file is created if it does not exist).
    Add(UserPassword),
    /// Change a user's password.
    Update(UserPassword),
    /// Remove a user.
    Delete {
        /// The password file.
        file: PathBuf,
        /// The user name.
        user: String,
    },
}

#[derive(Debug, clap::Args)]
struct UserPassword {
    /// The password file.
    file: PathBuf,
    /// The user name.
    user: String,
    /// The password; without it, the first line of standard input is read.
    #[arg(long, short = 'p')]
    password: Option<String>,
    /// PBKDF2 iterations.
    #[arg(long, default_value_t = DEFAULT_ITERATIONS, value_parser = clap::value_parser!(u32).range(i64::from(MIN_ITERATIONS)..))]
    iterations: u32,
}

fn password(given: &Option<String>) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err("empty password: give it with --password or as the first line of standard input".into());
    }
    Ok(p)
}

/// Run `tern passwd`.
pub fn run(args: Args) -> Result<(), String> {
    let fail = |file: &PathBuf, e: PasswordError| format!("{}: {e}", file.display());
    match args.action {
        Action::Add(a) => {
            let mut f = PasswordFile::load_or_new(&a.file).map_err(|e| fail(&a.file, e))?;
            let p = password(&a.password)?;
            f.add(&a.user, p.as_bytes(), a.iterations)
                .map_err(|e| fail(&a.file, e))?;
            f.save(&a.file).map_err(|e| fail(&a.file, e))?;
        }
        Action::Update(a) => {
            let mut f = PasswordFile::load(&a.file).map_err(|e| fail(&a.file, e))?;
            let p = password(&a.password)?;
            f.update(&a.user, p.as_bytes(), a.iterations)
                .map_err(|e| fail(&a.file, e))?;
            f.save(&a.file).map_err(|e| fail(&a.file, e))?;
        }
        Action::Delete { file, user } => {
            let mut f = PasswordFile::load(&file).map_err(|e| fail(&file, e))?;
            f.delete(&user).map_err(|e| fail(&file, e))?;
            f.save(&file).map_err(|e| fail(&file, e))?;
        }
    }
    Ok(())
}
