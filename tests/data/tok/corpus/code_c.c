/* ring buffer with a cap */
#include <stdint.h>
#include <string.h>

struct ring {
	uint8_t *buf;
	size_t head, tail, cap;   /* bytes */
};

static size_t ring_used(const struct ring *r)
{
	return (r->head + r->cap - r->tail) % r->cap;
}

int ring_put(struct ring *r, const void *p, size_t n)
{
	if (n > r->cap - ring_used(r) - 1)
		return -1;
	for (size_t i = 0; i < n; i++) {
		r->buf[r->head] = ((const uint8_t *)p)[i];
		r->head = (r->head + 1) % r->cap;
	}
	return 0;
}
#define MAX(a, b) ((a) > (b) ? (a) : (b))
int main(void) { char x[16]; printf("%d\n", 0x7fffffff); return x[0] != '\0'; }
