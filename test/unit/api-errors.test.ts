import assert from 'node:assert/strict';
import { test } from 'node:test';
import { apiMessage } from '../../src/mode/kubernetes/api-errors.ts';

test("apiMessage: one line, whatever the API's Status message or body holds", () => {
  const status = (body: unknown) => Object.assign(new Error('HTTP-Code: 422\nMessage: …'), { code: 422, body });
  assert.equal(apiMessage(status({ message: 'first\n  second\r\nthird  ' })), '422: first second third');
  assert.equal(apiMessage(status(JSON.stringify({ message: 'a\nb' }))), '422: a b');
  assert.equal(apiMessage(status('<html>\n<b>bad gateway</b>\n</html>')), '422: <html> <b>bad gateway</b> </html>');
  assert.equal(apiMessage(status(undefined)), '422: HTTP-Code: 422');
});
