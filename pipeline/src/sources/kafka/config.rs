//! How to reach the brokers: bootstrap servers plus the librdkafka options a
//! deployment needs (TLS, SASL), shared by every client a command makes;
//! and the one way a topic is named on the command line,
//! `kafka://BROKERS/TOPIC` ([`KafkaUrl`]).
//!
//! Option values may be secrets (`sasl.password`, `ssl.key.password`), so
//! they are never shown: [`KafkaConfig`]'s `Debug` prints the keys only.

use rdkafka::ClientConfig;

/// A topic and its brokers as every command names them:
/// `kafka://BROKER[,BROKER...]/TOPIC`.
///
/// ```
/// use stockanomaly::sources::kafka::KafkaUrl;
///
/// let url = KafkaUrl::parse("kafka://k1:9092,k2:9092/ticks").unwrap();
/// assert_eq!((url.brokers.as_str(), url.topic.as_str()), ("k1:9092,k2:9092", "ticks"));
/// assert!(KafkaUrl::parse("localhost:9092/ticks").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic.
    pub topic: String,
}

impl KafkaUrl {
    /// The form, for messages.
    pub const FORM: &'static str = "kafka://BROKER[,BROKER...]/TOPIC";

    /// Reads `kafka://BROKERS/TOPIC`; the error says what is expected.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{url:?}: expected {}, e.g. kafka://localhost:9092/ticks",
                Self::FORM
            )
        };
        let rest = url.strip_prefix("kafka://").ok_or_else(bad)?;
        match rest.split_once('/') {
            // A topic name never holds a `/` (Kafka allows [a-zA-Z0-9._-]).
            Some((b, t)) if !b.is_empty() && !t.is_empty() && !t.contains('/') => Ok(KafkaUrl {
                brokers: b.to_owned(),
                topic: t.to_owned(),
            }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for KafkaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kafka://{}/{}", self.brokers, self.topic)
    }
}

/// Bootstrap servers and extra client options (see the module
/// documentation).
#[derive(Clone, Default)]
pub struct KafkaConfig {
    brokers: String,
    options: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.options.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("options", &keys)
            .finish()
    }
}

impl KafkaConfig {
    /// The brokers alone (`host:port[,host:port...]`).
    pub fn new(brokers: &str) -> Self {
        KafkaConfig {
            brokers: brokers.to_owned(),
            options: Vec::new(),
        }
    }

    /// Adds librdkafka options, applied to every client after the
    /// command's own settings (so a deployment can override them).
    pub fn with_options(mut self, options: Vec<(String, String)>) -> Self {
        self.options.extend(options);
        self
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The option keys (never their values, which may be secrets).
    pub fn option_keys(&self) -> Vec<&str> {
        self.options.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// A client configuration with the brokers; the extra options are
    /// applied by [`KafkaConfig::finish`] once the command's settings are.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// `error` with every option value replaced by `<hidden>`: librdkafka
    /// names a value it refuses when a client is created, and a value may
    /// be a secret.
    pub fn redact(&self, error: rdkafka::error::KafkaError) -> rdkafka::error::KafkaError {
        use rdkafka::error::KafkaError;
        let hide = |text: String| {
            self.options
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .fold(text, |t, (_, v)| t.replace(v.as_str(), "<hidden>"))
        };
        match error {
            KafkaError::ClientCreation(text) => KafkaError::ClientCreation(hide(text)),
            KafkaError::ClientConfig(code, text, key, _value) => {
                KafkaError::ClientConfig(code, hide(text), key, "<hidden>".into())
            }
            other => other,
        }
    }

    /// Applies the extra options to `config` (last, so they win).
    pub fn finish<'a>(&self, config: &'a mut ClientConfig) -> &'a mut ClientConfig {
        for (k, v) in &self.options {
            config.set(k, v);
        }
        config
    }
}

/// Options a deployment may not set: the commands set them, and the
/// detector's exactly-once and end-of-partition logic depend on them.
const MANAGED: [(&str, &str); 4] = [
    ("bootstrap.servers", "give the brokers in --source"),
    ("group.id", "use --group"),
    (
        "enable.auto.commit",
        "offsets are committed with the alerts",
    ),
    (
        "enable.partition.eof",
        "partition ends close market buckets",
    ),
];

/// One `--kafka-option key=value`: a librdkafka client property (TLS,
/// SASL, timeouts). The value may be a secret: `Debug` and `Display` show
/// the key only.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    key: String,
    value: String,
}

impl KafkaOption {
    /// The property's name.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<hidden>", self.key)
    }
}

impl std::fmt::Display for KafkaOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<hidden>", self.key)
    }
}

impl std::str::FromStr for KafkaOption {
    type Err = String;

    /// Parses `key=value`; the error never repeats the value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((key, value)) = s.split_once('=') else {
            return Err("expected KEY=VALUE (a librdkafka property, e.g. \
                        security.protocol=SASL_SSL)"
                .into());
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            return Err(format!(
                "{key:?} is not a librdkafka property name (letters, digits, dots)"
            ));
        }
        if let Some((_, why)) = MANAGED.iter().find(|(k, _)| *k == key) {
            return Err(format!("{key} cannot be set here: {why}"));
        }
        Ok(KafkaOption {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl KafkaConfig {
    /// The brokers with `options` (see [`KafkaConfig::with_options`]).
    pub fn from_options(brokers: &str, options: &[KafkaOption]) -> Self {
        KafkaConfig::new(brokers).with_options(
            options
                .iter()
                .map(|o| (o.key.clone(), o.value.clone()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_never_show_their_values() {
        let o: KafkaOption = "sasl.password=hunter2=x".parse().unwrap();
        assert_eq!(o.key(), "sasl.password");
        assert_eq!(o.value, "hunter2=x");
        assert!(!format!("{o:?} {o}").contains("hunter2"));
        let e = "sasl.password".parse::<KafkaOption>().unwrap_err();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = "group.id=g".parse::<KafkaOption>().unwrap_err();
        assert!(e.contains("--group"), "{e}");
        let e = "bad key=hunter2".parse::<KafkaOption>().unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let c = KafkaConfig::from_options("b:1", &[o]);
        assert_eq!(c.option_keys(), vec!["sasl.password"]);
    }

    #[test]
    fn debug_never_shows_option_values() {
        let c = KafkaConfig::new("b:9092")
            .with_options(vec![("sasl.password".into(), "hunter2".into())]);
        let shown = format!("{c:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn refusals_do_not_repeat_the_values() {
        let c = KafkaConfig::new("b:9092")
            .with_options(vec![("socket.timeout.ms".into(), "s3cret".into())]);
        let e = c.redact(rdkafka::error::KafkaError::ClientCreation(
            "Invalid value \"s3cret\" for configuration property \"socket.timeout.ms\"".into(),
        ));
        let text = e.to_string();
        assert!(
            !text.contains("s3cret") && text.contains("socket.timeout.ms"),
            "{text}"
        );
    }

    #[test]
    fn options_win_over_the_commands_settings() {
        let c = KafkaConfig::new("b:9092")
            .with_options(vec![("session.timeout.ms".into(), "45000".into())]);
        let mut cc = c.client();
        cc.set("session.timeout.ms", "10000");
        c.finish(&mut cc);
        assert_eq!(cc.get("session.timeout.ms"), Some("45000"));
        assert_eq!(cc.get("bootstrap.servers"), Some("b:9092"));
    }
}
