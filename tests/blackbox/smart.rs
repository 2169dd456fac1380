//! SMART Backend Services: a client with a registered key gets an access token at
//! `/auth/token` with a signed JWT assertion and uses it; replays and wrong keys are refused.

use crate::support::{for_each_backend, for_each_backend_with, Caller, Server};
use serde_json::Value;
use std::time::{Duration, Instant};

#[test]
fn client_credentials_with_a_signed_assertion() {
    for_each_backend(|server| {
        let (private_pem, jwks) =
            renkei_auth::generate_client_key_es384(Some("k1")).expect("client key");
        let jwks_path = std::env::temp_dir().join(format!(
            "renkei-jwks-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&jwks_path, jwks.to_string()).expect("write jwks");
        server.cli(&[
            "client",
            "add",
            "--id",
            "smart-ehr",
            "--organization",
            "Organization/clinic-s",
            "--scope",
            "system/Patient.rs system/Observation.cruds",
            "--jwks",
            &jwks_path.display().to_string(),
        ]);
        let _ = std::fs::remove_file(&jwks_path);

        let config: Value = server
            .anonymous()
            .get("/.well-known/smart-configuration")
            .expect(200)
            .json();
        let token_url = config["token_endpoint"]
            .as_str()
            .expect("token_endpoint")
            .to_string();
        assert!(token_url.ends_with("/auth/token"), "{config}");
        assert!(config["token_endpoint_auth_methods_supported"]
            .as_array()
            .is_some_and(|m| m.iter().any(|v| v == "private_key_jwt")));

        let http = reqwest::blocking::Client::new();
        // The token endpoint takes POST only, and says so.
        let wrong_method = http.get(&token_url).send().expect("GET token endpoint");
        assert_eq!(wrong_method.status().as_u16(), 405);
        assert_eq!(
            wrong_method
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some("POST, OPTIONS")
        );
        let ask = |assertion: &str, scope: &str| {
            let form = format!(
                "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}&scope={}",
                "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer",
                scope.replace('/', "%2F").replace(' ', "+"),
            );
            http.post(&token_url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .expect("token request")
        };
        let assertion = renkei_auth::sign_client_assertion(
            &private_pem,
            "k1",
            "smart-ehr",
            &token_url,
            chrono::Utc::now(),
        )
        .expect("assertion");
        let granted = ask(&assertion, "system/Observation.rs");
        assert_eq!(granted.status().as_u16(), 200);
        let body: Value = granted.json().expect("json");
        assert_eq!(
            body["token_type"]
                .as_str()
                .map(str::to_lowercase)
                .as_deref(),
            Some("bearer")
        );
        assert_eq!(body["scope"], "system/Observation.rs");
        let token = body["access_token"].as_str().expect("access_token");
        let with_token = server.with_token(token);
        with_token.get("/Observation").expect(200);
        // The granted scope is what was asked for: Patient is not in it.
        with_token.get("/Patient").expect(403);

        // The same assertion again is a replay.
        let replay = ask(&assertion, "system/Observation.rs").status().as_u16();
        assert!(matches!(replay, 400 | 401), "replay answered {replay}");
        // An assertion signed with another key is refused.
        let (other_key, _) = renkei_auth::generate_client_key_es384(Some("k1")).expect("key");
        let forged = renkei_auth::sign_client_assertion(
            &other_key,
            "k1",
            "smart-ehr",
            &token_url,
            chrono::Utc::now(),
        )
        .expect("assertion");
        let refused = ask(&forged, "system/Observation.rs");
        assert!(
            matches!(refused.status().as_u16(), 400 | 401),
            "{}",
            refused.status()
        );

        // Every token request leaves a Login event (DICOM User Authentication), granted or
        // refused, naming the client it claimed to be.
        let auditor = server.token_for("auditor-login", "Organization/clinic-s", "auditor", &[]);
        let logins: Value = server
            .with_token(&auditor)
            .get("/AuditEvent?type=110114&_count=50")
            .expect(200)
            .json();
        let events: Vec<&Value> = logins["entry"]
            .as_array()
            .map(|entries| entries.iter().map(|e| &e["resource"]).collect())
            .unwrap_or_default();
        let of_smart_ehr: Vec<&&Value> = events
            .iter()
            .filter(|e| e.to_string().contains("smart-ehr"))
            .collect();
        assert_eq!(of_smart_ehr.len(), 3, "{logins}");
        for event in &of_smart_ehr {
            assert_eq!(event["subtype"][0]["code"], "110122", "{event}");
            assert_eq!(event["action"], "E", "{event}");
        }
        let outcomes: Vec<&str> = of_smart_ehr
            .iter()
            .filter_map(|e| e["outcome"].as_str())
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == "0").count(),
            1,
            "{logins}"
        );
        assert_eq!(
            outcomes.iter().filter(|o| **o == "4").count(),
            2,
            "{logins}"
        );
        let granted = of_smart_ehr.iter().find(|e| e["outcome"] == "0").unwrap();
        assert!(
            granted.to_string().contains("Organization/clinic-s"),
            "{granted}"
        );
        assert!(of_smart_ehr
            .iter()
            .filter(|e| e["outcome"] == "4")
            .all(|e| e["outcomeDesc"].as_str().is_some_and(|d| !d.is_empty())));
    });
}

/// A token holds only while its client's registration still grants it: removing the client,
/// registering it again, moving it to another facility or narrowing its scopes ends its
/// tokens at once.
#[test]
fn tokens_end_with_their_client_registration() {
    for_each_backend(|s| {
        let token = s.token_for("short-lived", "Organization/reg-a", "facility", &[]);
        let who = s.with_token(&token);
        who.get("Observation?code=x").expect(200);
        // Narrowed to another type: the old token's Observation scope is gone.
        s.cli(&[
            "client",
            "add",
            "--id",
            "short-lived",
            "--organization",
            "Organization/reg-a",
            "--role",
            "facility",
            "--scope",
            "system/Patient.rs",
        ]);
        registration_settles();
        let r = who.get("Observation?code=x").expect(401);
        assert!(r.body.contains("registration changed"), "{}", r.body);
        // Registered again as it was: a new token works; the old one, issued before this
        // registration, does not (it did, which kept a leaked token alive through a
        // re-registration with a new key).
        let again = s.token_for("short-lived", "Organization/reg-a", "facility", &[]);
        registration_settles();
        s.with_token(&again).get("Observation?code=x").expect(200);
        who.get("Observation?code=x").expect(401);
        // Moved to another facility, then removed.
        let moved = s.token_for("short-lived", "Organization/reg-b", "facility", &[]);
        registration_settles();
        who.get("Observation?code=x").expect(401);
        s.with_token(&moved).get("Observation?code=x").expect(200);
        s.cli(&["client", "remove", "--id", "short-lived"]);
        registration_settles();
        s.with_token(&moved)
            .get("Observation?code=x")
            .expect(401)
            .outcome();
        // Removed, then registered again exactly as before: the removal still holds for the
        // tokens issued before it.
        let fresh = s.token_for("short-lived", "Organization/reg-b", "facility", &[]);
        registration_settles();
        s.with_token(&fresh).get("Observation?code=x").expect(200);
        s.with_token(&moved).get("Observation?code=x").expect(401);
        // Removed and registered again within the same second: the token names the
        // registration it was issued under, so it still ends (whole-second times let it live).
        s.cli(&["client", "remove", "--id", "short-lived"]);
        let again = s.token_for("short-lived", "Organization/reg-b", "facility", &[]);
        registration_settles();
        s.with_token(&fresh).get("Observation?code=x").expect(401);
        s.with_token(&again).get("Observation?code=x").expect(200);
    });
}

/// The client registrations are read again on the blocking pool: they had been read on an
/// actix worker thread, so a slow database (pool starvation, a lock) stalled every request
/// on that worker, which clients saw as empty 408s and 503s. A read that fails answers 503
/// with an OperationOutcome, and the next request reads again.
#[test]
fn reading_the_registrations_stalls_no_worker() {
    use renkei_store::{DatabaseUrl, Sql, Store, StoreError, StoreOptions};
    // One worker thread: a read on it would hold back every other request.
    for_each_backend_with(&[("RENKEI_WORKERS", "1")], |s| {
        let token = s.token_for("slow-db", "Organization/reg-s", "facility", &[]);
        let who = s.with_token(&token);
        who.get("Observation?code=x").expect(200);
        let store = Store::open(
            &DatabaseUrl::parse(s.database_url()).expect("database url"),
            &StoreOptions::default(),
        )
        .expect("open store");
        let exec = |text: &str| {
            store
                .write(|tx| tx.execute(&Sql::new(text)).map(|_| ()))
                .expect(text);
        };
        // Another session makes the registrations unreadable.
        exec("ALTER TABLE clients RENAME TO clients_away");
        registration_settles();
        let r = who.get("Observation?code=x").expect(503);
        assert_eq!(r.outcome()["issue"][0]["code"], "transient", "{}", r.body);
        exec("ALTER TABLE clients_away RENAME TO clients");
        who.get("Observation?code=x").expect(200);
        if s.pg_database_name().is_none() {
            // Skipped on SQLite: in WAL mode another session's lock never holds a reader
            // back, so the slow read below cannot be staged.
            return;
        }
        registration_settles();
        std::thread::scope(|scope| {
            // Another session holds the table for 3 s: the server's read waits for it.
            let holder = scope.spawn(|| {
                store.write(|tx| {
                    tx.execute(&Sql::new("LOCK TABLE clients IN ACCESS EXCLUSIVE MODE"))?;
                    std::thread::sleep(Duration::from_secs(3));
                    Ok::<_, StoreError>(())
                })
            });
            std::thread::sleep(Duration::from_millis(300));
            let waiting = scope.spawn(|| who.get("Observation?code=x").status);
            std::thread::sleep(Duration::from_millis(300));
            let began = Instant::now();
            s.anonymous().get("metadata").expect(200);
            let took = began.elapsed();
            assert!(
                took < Duration::from_millis(1_500),
                "metadata took {took:?}"
            );
            // The token check waited for the read, then passed.
            assert_eq!(waiting.join().expect("request thread"), 200);
            holder.join().expect("lock thread").expect("lock");
        });
    });
}

/// The server reads client registrations changed by another process (the CLI) within a
/// second.
fn registration_settles() {
    std::thread::sleep(std::time::Duration::from_millis(1_100));
}

/// A facility client of `organization` registered with `scope` only.
fn scoped_facility<'s>(s: &'s Server, id: &str, organization: &str, scope: &str) -> Caller<'s> {
    s.with_token(&s.token_for(id, organization, "facility", &["--scope", scope]))
}

/// The criteria of a conditional create, update, patch or delete are a search: a token that
/// may create but not search Observations learned what they held through `If-None-Exist`
/// (200 with the existing resource against 201; black-box review). Each conditional form
/// needs the search scope (`s`) besides its own, in a Bundle too; refusals are 403, audited.
#[test]
fn conditional_interactions_need_the_search_scope() {
    use serde_json::json;
    for_each_backend(|s| {
        const ORG: &str = "Organization/hosp-cond";
        let caller = |id: &str, scope: &str| scoped_facility(s, id, ORG, scope);
        let full = caller("cond-full", "system/Observation.cruds");
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "LEAK-MARKER"},
            "identifier": [{"system": "urn:x", "value": "leak1"}],
            "valueQuantity": {"value": 150}});
        full.post("Observation", &obs).expect(201);
        let criteria = "identifier=urn:x|leak1";
        let create_only = caller("cond-c", "system/Observation.c");
        for probe in [criteria, "value-quantity=gt100", "value-quantity=gt200"] {
            let r = create_only
                .send_json_with("POST", "Observation", &obs, &[("If-None-Exist", probe)])
                .expect(403);
            assert!(r.outcome().to_string().contains("search"), "{}", r.body);
            assert!(!r.body.contains("LEAK-MARKER"), "{}", r.body);
        }
        // A plain create needs no search.
        let mut plain = obs.clone();
        plain["identifier"] = json!([{"system": "urn:x", "value": "plain"}]);
        create_only.post("Observation", &plain).expect(201);
        let update_only = caller("cond-u", "system/Observation.u");
        update_only
            .put(&format!("Observation?{criteria}"), &obs)
            .expect(403);
        update_only
            .send_raw(
                "PATCH",
                &format!("Observation?{criteria}"),
                "application/json-patch+json",
                br#"[{"op":"replace","path":"/status","value":"amended"}]"#,
            )
            .expect(403);
        let delete_only = caller("cond-d", "system/Observation.d");
        delete_only
            .delete(&format!("Observation?{criteria}"))
            .expect(403);
        // As Bundle entries: a transaction is refused whole, a batch entry on its own.
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": obs, "request": {"method": "POST", "url": "Observation",
                "ifNoneExist": criteria}}]});
        let r = create_only.post("", &transaction).expect(403);
        assert!(!r.body.contains("LEAK-MARKER"), "{}", r.body);
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": obs, "request": {"method": "PUT", "url": format!("Observation?{criteria}")}}]});
        let r = update_only.post("", &batch).expect(200).json();
        assert_eq!(
            r["entry"][0]["response"]["status"]
                .as_str()
                .map(|s| &s[..3]),
            Some("403"),
            "{r}"
        );
        // A conditional reference in a transaction's resource searches its type too: without
        // Patient's search scope it is refused, resolved or not.
        let referring = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Observation", "status": "final",
                          "code": {"text": "probe"},
                          "subject": {"reference": "Patient?identifier=urn:x|someone"}},
             "request": {"method": "POST", "url": "Observation"}}]});
        let r = create_only.post("", &referring).expect(403);
        assert!(r.body.contains("conditional reference"), "{}", r.body);
        // With the search scope the same requests run.
        let searcher = caller("cond-cs", "system/Observation.cs");
        let r = searcher
            .send_json_with("POST", "Observation", &obs, &[("If-None-Exist", criteria)])
            .expect(200);
        assert!(r.body.contains("LEAK-MARKER"));
        // The refusals are on record.
        let auditor = s.with_token(&s.token_for("cond-auditor", ORG, "auditor", &[]));
        for (client, at_least) in [("cond-c", 4), ("cond-u", 2), ("cond-d", 1)] {
            let refused =
                auditor.read_json(&format!("AuditEvent?agent={client}&outcome=4&_count=50"));
            let n = refused["entry"].as_array().map_or(0, Vec::len);
            assert!(n >= at_least, "{client}: {refused}");
        }
    });
}

/// An update that creates the resource is a create: a token with the update scope alone may
/// change what exists but not create, by id, by criteria or in a Bundle.
#[test]
fn an_update_that_creates_needs_the_create_scope() {
    use serde_json::json;
    for_each_backend(|s| {
        const ORG: &str = "Organization/hosp-upd";
        let caller = |id: &str, scope: &str| scoped_facility(s, id, ORG, scope);
        let full = caller("upd-full", "system/Observation.cruds");
        let existing = full.create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}}));
        let update_only = caller("upd-u", "system/Observation.us");
        let mut changed = existing.clone();
        changed["status"] = json!("amended");
        let path = format!("Observation/{}", existing["id"].as_str().unwrap());
        update_only.put(&path, &changed).expect(200);

        let new = json!({"resourceType": "Observation", "id": "upd-brand-new",
            "status": "final", "code": {"text": "new"}});
        let r = update_only
            .put("Observation/upd-brand-new", &new)
            .expect(403);
        assert!(r.body.contains("create"), "{}", r.body);
        full.get("Observation/upd-brand-new").expect(404);
        let mut unmatched = new.clone();
        unmatched.as_object_mut().unwrap().remove("id");
        update_only
            .put("Observation?identifier=urn:upd|none", &unmatched)
            .expect(403);
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": new, "request": {"method": "PUT", "url": "Observation/upd-brand-new"}}]});
        let r = update_only.post("", &batch).expect(200).json();
        assert_eq!(
            r["entry"][0]["response"]["status"]
                .as_str()
                .map(|s| &s[..3]),
            Some("403"),
            "{r}"
        );
        full.get("Observation/upd-brand-new").expect(404);
        // With the create scope the same PUT creates.
        caller("upd-uc", "system/Observation.cus")
            .put("Observation/upd-brand-new", &new)
            .expect(201);
    });
}
