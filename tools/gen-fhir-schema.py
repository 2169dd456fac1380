#!/usr/bin/env python3
"""Generate crates/renkei-fhir-schema/data/r4-elements.json from the official FHIR R4 (4.0.1)
definitions.

Inputs (read-only, default directory /work/shared/fixtures/r4-definitions, override with argv[1]):
  * fhir.schema.json            - the R4 JSON schema: every resource type, datatype and backbone
                                  element (properties, JSON shape, primitive types, enums of
                                  required-binding codes, required complex elements).
  * profiles-types.json         - Bundle of the datatype StructureDefinitions (min cardinality).
  * structuredefinitions/*.json - StructureDefinitions of the resources the project focuses on
                                  (isSummary, min cardinality, choice types).

Output: a compact JSON document (see crates/renkei-fhir-schema/data/README.md for the format).

Summary flags:
  * resources with a StructureDefinition (and their backbone elements): ElementDefinition.isSummary,
    plus every element with min >= 1;
  * resources WITHOUT a StructureDefinition here (fallback): id, meta, implicitRules, backbone
    modifierExtension and every required element (min >= 1 as far as the JSON schema tells: the
    schema lists required complex elements only, not required primitives);
  * datatypes: all elements except Attachment.data (R4 ElementDefinition.isSummary: "Other than
    Attachment.data, all data type properties are included in the summary form").

Required flags (min >= 1): from the StructureDefinitions where available, otherwise the JSON
schema's `required` lists (which omit primitive elements).

Usage: python3 tools/gen-fhir-schema.py [definitions-dir] [output-file]
"""

import glob
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFS_DIR = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/fixtures/r4-definitions"
OUT = (
    sys.argv[2]
    if len(sys.argv) > 2
    else os.path.join(HERE, "..", "crates", "renkei-fhir-schema", "data", "r4-elements.json")
)

F_ARRAY = 1
F_REQUIRED = 2
F_SUMMARY = 4
F_MODIFIER = 8

PRIMITIVES = [
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
    "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
    "uri", "url", "uuid", "xhtml",
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ucfirst(s):
    return s[:1].upper() + s[1:]


def main():
    schema_path = os.path.join(DEFS_DIR, "fhir.schema.json")
    types_path = os.path.join(DEFS_DIR, "profiles-types.json")
    sd_paths = sorted(glob.glob(os.path.join(DEFS_DIR, "structuredefinitions", "*.json")))
    schema = json.load(open(schema_path))
    defs = schema["definitions"]
    resource_types = [r["$ref"].split("/")[-1] for r in defs["ResourceList"]["oneOf"]]
    resource_set = set(resource_types)

    # ---- StructureDefinitions: path -> element
    sd_elems = {}  # path -> ElementDefinition
    sd_roots = set()  # type names that have a StructureDefinition
    datatype_names = set()

    def add_sd(sd):
        if sd.get("derivation") == "constraint":
            return  # SimpleQuantity, MoneyQuantity: profiles, not types
        sd_roots.add(sd["type"])
        if sd.get("kind") in ("complex-type", "primitive-type"):
            datatype_names.add(sd["type"])
        for e in sd["snapshot"]["element"]:
            sd_elems[e["path"]] = e

    for entry in json.load(open(types_path))["entry"]:
        r = entry["resource"]
        if r.get("resourceType") == "StructureDefinition":
            add_sd(r)
    sd_resource_files = []
    for p in sd_paths:
        sd = json.load(open(p))
        if sd.get("resourceType") == "StructureDefinition" and sd.get("kind") == "resource":
            add_sd(sd)
            sd_resource_files.append(os.path.basename(p))

    # ---- schema def -> SD path (Patient_Contact -> Patient.contact)
    def prop_ref(p):
        if "$ref" in p:
            return p["$ref"].split("/")[-1]
        items = p.get("items")
        if isinstance(items, dict) and "$ref" in items:
            return items["$ref"].split("/")[-1]
        return None

    def_path = {}
    owner = {}  # backbone def -> top-level type it belongs to
    queue = []
    for name, d in defs.items():
        if "_" not in name and "properties" in d:
            def_path[name] = name
            owner[name] = name
            queue.append(name)
    while queue:
        name = queue.pop(0)
        for pname, p in defs[name]["properties"].items():
            if pname.startswith("_"):
                continue
            ref = prop_ref(p)
            if ref and "_" in ref and ref not in def_path and ref in defs:
                epath = def_path[name] + "." + pname
                cref = sd_elems.get(epath, {}).get("contentReference")
                if cref:
                    # e.g. CapabilityStatement.rest.searchParam -> #CapabilityStatement.rest.resource.searchParam
                    epath = cref.lstrip("#")
                def_path[ref] = epath
                owner[ref] = owner[name]
                queue.append(ref)

    # ---- primitive classification of inline properties
    prim_sig = {}
    for t in PRIMITIVES:
        d = defs[t]
        prim_sig.setdefault((d.get("type"), d.get("pattern")), []).append(t)

    def primitive_of_inline(pname, p):
        cands = prim_sig.get((p.get("type"), p.get("pattern")), [])
        for c in cands:
            if pname.endswith(ucfirst(c)):
                return c
        if cands:
            return cands[0]
        # inline variants with their own pattern (e.g. valueBase64Binary): go by the name suffix
        for c in sorted(PRIMITIVES, key=len, reverse=True):
            if pname.endswith(ucfirst(c)) and p.get("type") in ("string", "number", "boolean"):
                return c
        return None

    enums = []
    enum_index = {}

    def enum_id(values):
        key = tuple(values)
        if key not in enum_index:
            enum_index[key] = len(enums)
            enums.append(list(values))
        return enum_index[key]

    warnings = []
    dropped_enums = []
    out_types = {}
    sd_matched = set()
    for name, d in defs.items():
        if "properties" not in d:
            continue
        path = def_path.get(name)
        top = owner.get(name, name)
        is_resource = top in resource_set
        has_sd = top in sd_roots
        is_datatype = not is_resource
        schema_required = set(d.get("required", []))
        props = d["properties"]

        # choice groups known from the SD: jsonName -> base
        sd_choice = {}
        if has_sd and path:
            prefix = path + "."
            for epath, e in sd_elems.items():
                if epath.startswith(prefix) and "." not in epath[len(prefix):] and epath.endswith("[x]"):
                    base = epath[len(prefix):-3]
                    for t in e.get("type", []):
                        sd_choice[base + ucfirst(t["code"])] = (base, epath)

        # heuristic choice groups (no SD): same prefix, suffix = type name, >= 2 variants
        heur = {}
        if not has_sd:
            groups = {}
            for pname, p in props.items():
                if pname.startswith("_") or pname == "resourceType":
                    continue
                ref = prop_ref(p)
                tname = ref if ref else primitive_of_inline(pname, p)
                if "enum" in p or p.get("type") == "array":
                    continue  # choice elements are never repeating
                if tname and pname.endswith(ucfirst(tname)) and len(pname) > len(tname):
                    base = pname[: -len(tname)]
                    groups.setdefault(base, []).append(pname)
            for base, names in groups.items():
                # variants of one choice element share the element's description
                # (this rejects e.g. PaymentReconciliation.paymentDate/paymentIdentifier)
                descs = {props[n].get("description") for n in names}
                if len(names) >= 2 and len(descs) == 1:
                    for n in names:
                        heur[n] = base

        rows = []
        for pname, p in props.items():
            if pname.startswith("_") or pname == "resourceType":
                continue
            flags = 0
            if p.get("type") == "array":
                flags |= F_ARRAY
            ref = prop_ref(p)
            enum = None
            if "enum" in p:
                tname = "code"
                enum = p["enum"]
            elif ref == "ResourceList":
                tname = "Resource"
            elif ref:
                tname = ref
            else:
                tname = primitive_of_inline(pname, p)
                if p.get("type") == "array" and isinstance(p.get("items"), dict) and "enum" in p["items"]:
                    tname = "code"
                    enum = p["items"]["enum"]
            if tname is None:
                warnings.append(f"{name}.{pname}: cannot determine type: {p}")
                continue

            choice = None
            elem = None
            if has_sd and path:
                epath = path + "." + pname
                if epath in sd_elems:
                    elem = sd_elems[epath]
                elif pname in sd_choice:
                    choice, epath = sd_choice[pname]
                    elem = sd_elems[epath]
                    # the SD type is authoritative for choice variants
                    for t in elem.get("type", []):
                        if choice + ucfirst(t["code"]) == pname and enum is None:
                            tname = t["code"] if t["code"] in PRIMITIVES or t["code"] in defs else tname
                elif pname != "modifierExtension":
                    warnings.append(f"{name}.{pname}: not in StructureDefinition ({path})")
                if elem is not None:
                    sd_matched.add(epath)
            else:
                choice = heur.get(pname)

            if elem is not None:
                strength = (elem.get("binding") or {}).get("strength")
                if enum is not None and strength != "required":
                    # the JSON schema also enumerates a few non-required bindings
                    # (e.g. Expression.language is extensible): not enforced
                    dropped_enums.append(f"{name}.{pname} ({strength})")
                    enum = None
                if elem.get("min", 0) >= 1:
                    flags |= F_REQUIRED
                if elem.get("isModifier"):
                    flags |= F_MODIFIER
                summary = bool(elem.get("isSummary")) or elem.get("min", 0) >= 1
                if elem.get("max") == "1" and p.get("type") == "array":
                    warnings.append(f"{name}.{pname}: array in schema but max=1 in SD")
            else:
                req = pname in schema_required or (choice is not None and choice in schema_required)
                if req:
                    flags |= F_REQUIRED
                summary = req
                if is_resource and name == top and pname in ("id", "meta", "implicitRules"):
                    summary = True
                if is_resource and name != top and pname == "modifierExtension":
                    summary = True
            if is_datatype:
                summary = not (name == "Attachment" and pname == "data")
            if summary:
                flags |= F_SUMMARY

            row = [pname, tname, flags]
            if choice is not None or enum is not None:
                row.append(choice if choice is not None else "")
            if enum is not None:
                row.append(enum_id(enum))
            rows.append(row)
        out_types[name] = rows

    # SD elements that never matched a schema property (sanity check)
    for epath, e in sd_elems.items():
        root = epath.split(".")[0]
        if root in ("Resource", "DomainResource", "Element", "BackboneElement") or root in PRIMITIVES:
            continue
        if "." not in epath or epath in sd_matched:
            continue
        last = epath.split(".")[-1]
        if last in ("id",) or e.get("max") == "0":
            continue
        warnings.append(f"SD element {epath} not matched to a schema property")

    sd_resources = sorted(t for t in sd_roots if t in resource_set)
    doc = {
        "origin": {
            "fhirVersion": "4.0.1",
            "generator": "tools/gen-fhir-schema.py",
            "schema": "fhir.schema.json (R4 4.0.1 JSON Schema) sha256 " + sha256(schema_path),
            "types": "profiles-types.json (hl7.fhir.r4.examples 4.0.1) sha256 " + sha256(types_path),
            "structureDefinitions": sd_resource_files,
            "license": "FHIR definitions: CC0-1.0 (HL7)",
        },
        "format": "types: name -> [[json name, type, flags(1 array,2 required,4 summary,8 modifier), choice base?, enum index?]]",
        "resourceTypes": resource_types,
        "sdResources": sd_resources,
        "enums": enums,
        "types": out_types,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("{\n")
        keys = list(doc.keys())
        for i, k in enumerate(keys):
            sep = "," if i < len(keys) - 1 else ""
            if k == "types":
                f.write(' "types": {\n')
                tn = list(doc["types"].keys())
                for j, t in enumerate(tn):
                    s2 = "," if j < len(tn) - 1 else ""
                    f.write("  " + json.dumps(t) + ":" + json.dumps(doc["types"][t], separators=(",", ":")) + s2 + "\n")
                f.write(" }" + sep + "\n")
            elif k == "enums":
                f.write(' "enums": [\n')
                for j, e in enumerate(enums):
                    s2 = "," if j < len(enums) - 1 else ""
                    f.write("  " + json.dumps(e, separators=(",", ":")) + s2 + "\n")
                f.write(" ]" + sep + "\n")
            else:
                f.write(" " + json.dumps(k) + ": " + json.dumps(doc[k], separators=(",", ":")) + sep + "\n")
        f.write("}\n")
    for d in dropped_enums:
        print("note: enum of non-required binding dropped:", d, file=sys.stderr)
    for w in warnings:
        print("warning:", w, file=sys.stderr)
    print(
        f"wrote {OUT}: {len(out_types)} types, {len(resource_types)} resource types, "
        f"{len(sd_resources)} with StructureDefinition, {len(enums)} enums, "
        f"{os.path.getsize(OUT)} bytes",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
