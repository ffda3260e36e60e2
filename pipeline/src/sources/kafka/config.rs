//! How to reach the brokers: bootstrap servers plus the librdkafka options a
//! deployment needs (TLS, SASL), shared by every client a command makes.
//!
//! Option values may be secrets (`sasl.password`, `ssl.key.password`), so
//! they are never shown: [`KafkaConfig`]'s `Debug` prints the keys only.

use rdkafka::ClientConfig;

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

    /// Applies the extra options to `config` (last, so they win).
    pub fn finish<'a>(&self, config: &'a mut ClientConfig) -> &'a mut ClientConfig {
        for (k, v) in &self.options {
            config.set(k, v);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_option_values() {
        let c = KafkaConfig::new("b:9092")
            .with_options(vec![("sasl.password".into(), "hunter2".into())]);
        let shown = format!("{c:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
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
