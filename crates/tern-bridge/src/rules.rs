//! Topic rules: which local topics go out and under which remote name, which remote topics
//! come in and under which local name. Pure functions over the configured rules.
//!
//! A rule's local topics are `local_prefix` + what its filter matches, its remote topics
//! `remote_prefix` + the same (Mosquitto's `topic PATTERN DIRECTION QOS LOCAL REMOTE`). The
//! first rule in configuration order whose filter matches decides.

use tern_broker::{BridgeConfig, BridgeTopic};
use tern_proto::topic::matches;
use tern_proto::QoS;

/// One rule, with its full filters computed once.
#[derive(Debug, Clone)]
struct Rule {
    topic: BridgeTopic,
    local_filter: String,
    remote_filter: String,
    qos: QoS,
}

/// The rules of one bridge.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    rules: Vec<Rule>,
}

/// Where a message goes: its topic on the other side and the highest QoS it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub topic: String,
    pub qos: QoS,
}

impl Rules {
    pub(crate) fn new(config: &BridgeConfig) -> Rules {
        let rules = config
            .topics
            .iter()
            .map(|t| Rule {
                local_filter: t.local_filter(),
                remote_filter: t.remote_filter(),
                qos: QoS::from_bits(t.qos).unwrap_or(QoS::AtLeastOnce),
                topic: t.clone(),
            })
            .collect();
        Rules { rules }
    }

    /// The local filters to subscribe to, with their QoS (rules `out` and `both`).
    pub(crate) fn out_filters(&self) -> impl Iterator<Item = (&str, QoS)> {
        self.rules
            .iter()
            .filter(|r| r.topic.direction.is_out())
            .map(|r| (r.local_filter.as_str(), r.qos))
    }

    /// The remote filters to subscribe to, with their QoS (rules `in` and `both`).
    pub(crate) fn in_filters(&self) -> impl Iterator<Item = (&str, QoS)> {
        self.rules
            .iter()
            .filter(|r| r.topic.direction.is_in())
            .map(|r| (r.remote_filter.as_str(), r.qos))
    }

    /// Where the local message on `topic` goes on the remote, if an `out` rule takes it.
    pub(crate) fn outbound(&self, topic: &str) -> Option<Route> {
        let r = self
            .rules
            .iter()
            .find(|r| r.topic.direction.is_out() && matches(topic, &r.local_filter))?;
        let rest = topic.strip_prefix(r.topic.local_prefix.as_str())?;
        Some(Route {
            topic: format!("{}{rest}", r.topic.remote_prefix),
            qos: r.qos,
        })
    }

    /// Where the remote message on `topic` goes locally, if an `in` rule takes it.
    pub(crate) fn inbound(&self, topic: &str) -> Option<Route> {
        let r = self
            .rules
            .iter()
            .find(|r| r.topic.direction.is_in() && matches(topic, &r.remote_filter))?;
        let rest = topic.strip_prefix(r.topic.remote_prefix.as_str())?;
        Some(Route {
            topic: format!("{}{rest}", r.topic.local_prefix),
            qos: r.qos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_broker::BridgeDirection::{Both, In, Out};

    fn rules() -> Rules {
        Rules::new(
            &BridgeConfig::new("t", "mqtt://h")
                .topic(BridgeTopic::new("edge/#", Out).prefixes("", "site1/"))
                .topic(BridgeTopic::new("cmd/#", In).prefixes("", "site1/"))
                .topic(BridgeTopic::new("x/+", Both).prefixes("l/", "r/").qos(2)),
        )
    }

    #[test]
    fn out_rules_map_local_topics_to_remote_ones() {
        let r = rules();
        assert_eq!(
            r.outbound("edge/a/b"),
            Some(Route {
                topic: "site1/edge/a/b".into(),
                qos: QoS::AtLeastOnce
            })
        );
        assert_eq!(r.outbound("cmd/a"), None, "an in rule does not send out");
        assert_eq!(
            r.outbound("l/x/1"),
            Some(Route {
                topic: "r/x/1".into(),
                qos: QoS::ExactlyOnce
            })
        );
        assert_eq!(r.outbound("x/1"), None, "without its local prefix");
    }

    #[test]
    fn in_rules_map_remote_topics_to_local_ones() {
        let r = rules();
        assert_eq!(
            r.inbound("site1/cmd/reboot").map(|r| r.topic),
            Some("cmd/reboot".into())
        );
        assert_eq!(r.inbound("site1/edge/a"), None, "an out rule does not bring in");
        assert_eq!(r.inbound("r/x/1").map(|r| r.topic), Some("l/x/1".into()));
        assert_eq!(r.inbound("cmd/reboot"), None, "without the remote prefix");
        let filters: Vec<_> = r.in_filters().map(|(f, _)| f.to_string()).collect();
        assert_eq!(filters, ["site1/cmd/#", "r/x/+"]);
        let filters: Vec<_> = r.out_filters().map(|(f, _)| f.to_string()).collect();
        assert_eq!(filters, ["edge/#", "l/x/+"]);
    }
}
