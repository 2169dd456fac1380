const Client = require('fhir-kit-client');
const client = new Client({ baseUrl: process.env.FHIR_BASE || 'http://127.0.0.1:8080/fhir', bearerToken: process.env.TOKEN });
(async () => {
  const created = await client.create({ resourceType: 'Patient', body: { resourceType: 'Patient', name: [{ family: '佐藤', given: ['一郎'] }], gender: 'male', birthDate: '1960-04-01' } });
  console.log('create', created.id, created.meta.versionId);
  const read = await client.read({ resourceType: 'Patient', id: created.id });
  console.log('read', read.name[0].family);
  read.active = true;
  const updated = await client.update({ resourceType: 'Patient', id: created.id, body: read });
  console.log('update version', updated.meta.versionId);
  const patched = await client.patch({ resourceType: 'Patient', id: created.id, JSONPatch: [{ op: 'replace', path: '/gender', value: 'other' }] });
  console.log('patch', patched.gender, patched.meta.versionId);
  for (let i = 0; i < 3; i++) { await client.update({ resourceType: 'Patient', id: created.id, body: { ...patched, id: created.id, birthDate: `196${i}-04-01` } }); }
  let page = await client.history({ resourceType: 'Patient', id: created.id, options: { _count: 2 } });
  let versions = [];
  while (page) { (page.entry || []).forEach(e => versions.push(e.response.etag)); const next = (page.link || []).some(l => l.relation === 'next'); page = next ? await client.nextPage({ bundle: page }) : null; }
  console.log('history paged', versions.join(','));
  const search = await client.search({ resourceType: 'Patient', searchParams: { family: '佐藤' } });
  console.log('search', search.entry.length);
  await client.delete({ resourceType: 'Patient', id: created.id });
  try { await client.read({ resourceType: 'Patient', id: created.id }); } catch (e) { console.log('read after delete', e.response.status); }
})().catch(e => { console.error('FAILED', e.response ? [e.response.status, JSON.stringify(e.response.data)] : e); process.exit(1); });
