//! Migration importers: what maps lands in a rules file that validates, and
//! everything else is reported with where it was.

use sluice_shaping::config::Rules;
use sluice_shaping::import::{import_kumo, import_pmta, ImportError};
use sluice_shaping::units::parse_rate;

const KUMO: &str = r#"
["default"]
connection_limit = 10
max_connection_rate = "100/min"
max_deliveries_per_connection = 100
max_message_rate = "100/s"
idle_timeout = "60s"
data_dot_timeout = "60s"
enable_tls = "OpportunisticInsecure"

[["default".automation]]
regex = ['''temporarily deferred''', '''rate limited''']
action = [
  {SetConfig={name="max_message_rate", value="1/minute"}},
  {SetConfig={name="connection_limit", value=1}},
]
duration = "90 minutes"

[["default".automation]]
regex = "TLS failure"
action = {SetConfig={name="enable_tls", value="Disabled"}}
duration = "30 days"

[provider."bigmail"]
match = [{MXSuffix=".bigmail.example"}, {DomainSuffix="bigmail.test"}, {HostName="mx.x"}]
max_deliveries_per_connection = 50
provider_connection_limit = 5

[[provider."bigmail".automation]]
regex = "\\[TS04\\]"
action = "Suspend"
duration = "2 hours"

["retail.example"]
connection_limit = "1,000"
enable_tls = "Required"
mx_rollup = false

["retail.example".sources."ip-1"]
connection_limit = 5
"#;

#[test]
fn kumo_maps_what_it_can_and_reports_the_rest() {
    let imported = import_kumo(KUMO, "shaping.toml").unwrap();
    let rules = Rules::parse(&imported.toml, "out.toml").unwrap();
    let d = &rules.default.layer;
    assert_eq!(d.max_connections, Some(10));
    assert_eq!(d.max_message_rate, Some(parse_rate("100/s").unwrap()));
    assert_eq!(d.max_deliveries_per_connection, Some(100));
    assert_eq!(d.backoff.len(), 1, "only the first automation maps");
    let retail = rules.effective("retail.example", &[], Some("ip-1"));
    assert_eq!(retail.max_connections.value, 5);
    assert_eq!(
        rules
            .effective("retail.example", &[], None)
            .max_connections
            .value,
        1000
    );
    let big = rules.effective("x.org", &["mx1.bigmail.example"], None);
    assert_eq!(big.site, "provider:bigmail");
    assert_eq!(big.max_connections.value, 5);
    assert_eq!(big.backoff[0].name, "kumo-provider.bigmail-0");

    let paths: Vec<&str> = imported.unmapped.iter().map(|u| u.path.as_str()).collect();
    for want in [
        "default.idle_timeout",
        "default.automation[1].action",
        "provider.bigmail.match[2].HostName",
        "\"retail.example\".mx_rollup",
        "source.ip-1",
    ] {
        assert!(paths.contains(&want), "`{want}` not reported in {paths:?}");
    }
}

#[test]
fn kumo_syntax_error() {
    assert!(matches!(
        import_kumo("[\"default\"\n", "bad.toml"),
        Err(ImportError::Syntax { .. })
    ));
}

const PMTA: &str = "
# global settings are not imported
http-mgmt-port 8080

<smtp-pattern-list common-errors>
    reply /generating high volumes of.* complaints from AOL/ mode=backoff
    reply /Excessive unknown recipients/ mode=backoff
    reply /unknown user/ bounce
</smtp-pattern-list>

<domain *>
    max-smtp-out 20
    max-msg-per-connection 100
    retry-after 10m
    bounce-after 4d12h
    use-starttls yes
</domain>

<domain bigmail.example>
    max-smtp-out 10
    max-msg-rate 1000/h
    max-connect-rate 10/m
    smtp-pattern-list common-errors
    backoff-max-msg-rate 100/h
    backoff-retry-after 30m
    backoff-to-normal-after 1h
    backoff-to-normal-after-delivery yes
    mx-rollup yes
    dkim-sign yes
</domain>

<domain *.partner.example>
    require-starttls yes
    max-msg-rate unlimited
</domain>

<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 mta1.example.net
</virtual-mta>
";

#[test]
fn pmta_maps_what_it_can_and_reports_the_rest() {
    let imported = import_pmta(PMTA, "config").unwrap();
    let rules = Rules::parse(&imported.toml, "out.toml").unwrap();
    assert_eq!(rules.default.layer.max_connections, Some(20));
    let big = rules.effective("bigmail.example", &[], None);
    assert_eq!(big.max_connections.value, 10);
    assert_eq!(
        big.max_message_rate.as_ref().unwrap().value,
        parse_rate("1000/h").unwrap()
    );
    assert_eq!(big.max_age.as_secs(), 4 * 86_400 + 12 * 3600);
    assert_eq!(big.backoff.len(), 2);
    assert_eq!(big.backoff[0].name, "common-errors-line-6");
    let partner = rules.effective("www.partner.example", &[], None);
    assert_eq!(partner.tls, sluice_shaping::config::TlsPolicy::Required);

    let paths: Vec<&str> = imported.unmapped.iter().map(|u| u.path.as_str()).collect();
    for want in [
        "line 3: http-mgmt-port",
        "line 8: reply",
        "line 28: mx-rollup",
        "line 29: dkim-sign",
        "line 37: <virtual-mta>",
    ] {
        assert!(paths.contains(&want), "`{want}` not reported in {paths:?}");
    }
}

#[test]
fn pmta_structure_errors() {
    let err = import_pmta("<domain x.example>\nmax-smtp-out 3\n", "config").unwrap_err();
    assert!(
        err.to_string().contains("line 1: <domain> is never closed"),
        "{err}"
    );
    let err = import_pmta("</domain>\n", "config").unwrap_err();
    assert!(err.to_string().contains("line 1:"), "{err}");
    // A value that maps but is out of range in Sluice fails validation of the
    // converted file, naming the converted key.
    let ok = import_pmta("<domain y.example>\nmax-smtp-out 0\n</domain>\n", "config").unwrap();
    assert!(ok.unmapped.iter().any(|u| u.path == "line 2: max-smtp-out"));
}
