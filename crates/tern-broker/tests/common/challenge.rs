//! A toy two-step challenge for the enhanced-authentication tests (v5 section
//! 4.12), shared by the test binaries that need it.

use tern_broker::{AuthExchange, AuthStep, Authenticator};
use tern_proto::{Auth, Packet, ReasonCode};

/// The method name the toy challenge registers.
pub const METHOD: &str = "TEST-CHALLENGE";

/// Accepts a client that sends "hello", then "response" to the "challenge";
/// answers the success with `welcome` as authentication data, if set.
pub struct Challenge {
    pub welcome: Option<&'static str>,
}

struct ChallengeExchange {
    step: u8,
    welcome: Option<&'static str>,
}

impl Authenticator for Challenge {
    fn method(&self) -> &str {
        METHOD
    }
    fn begin(&self, _client_id: &str, _username: Option<&str>) -> Box<dyn AuthExchange> {
        Box::new(ChallengeExchange {
            step: 0,
            welcome: self.welcome,
        })
    }
}

impl AuthExchange for ChallengeExchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        self.step += 1;
        match (self.step, data) {
            (1, Some(b"hello")) => AuthStep::Continue("challenge".into()),
            (2, Some(b"response")) => AuthStep::Success(self.welcome.map(Into::into)),
            _ => AuthStep::Failure,
        }
    }
}

/// An AUTH packet of the toy method with reason `rc` and `data`.
pub fn auth_packet(rc: ReasonCode, data: &'static str) -> Packet {
    let mut a = Auth {
        reason_code: Some(rc),
        properties: Default::default(),
    };
    a.properties.authentication_method = Some(METHOD.into());
    a.properties.authentication_data = Some(data.into());
    Packet::Auth(a)
}
