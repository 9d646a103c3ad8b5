export const training = {
};
